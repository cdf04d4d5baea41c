//! The agent's end of the plugin's socket: each connection carries one request, which
//! goes to the agent's loop (the only place that attaches and programs), and its reply.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{Reply, Request};

/// A request and where its reply goes.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// A request line longer than this is refused (a pod has a few addresses).
const MAX_LINE: u64 = 64 * 1024;
/// The plugin gives up sooner; this only bounds a stuck connection.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Binds `path` for root only, replacing a socket an earlier run left. A directory it
/// has to make is root's only; one that exists is left as it is (it may be shared, like
/// `/run`), and anything at `path` that is not a socket is refused, not deleted.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Never reachable by others, not even between bind and chmod.
    // SAFETY: umask only changes this process's file creation mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the agent's loop is gone.
pub async fn serve(listener: UnixListener, to_agent: mpsc::Sender<Incoming>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "CNI socket: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if to_agent.is_closed() {
            return;
        }
        let to_agent = to_agent.clone();
        tokio::spawn(async move {
            if let Err(e) = one(stream, to_agent).await {
                tracing::debug!(error = %e, "CNI socket: connection");
            }
        });
    }
}

async fn one(stream: UnixStream, to_agent: mpsc::Sender<Incoming>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        ANSWER_WITHIN,
        BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply {
            enforced: false,
            message: format!("unreadable request: {e}"),
        },
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            let sent = to_agent.send(Incoming { request, reply: tx }).await;
            match (sent, tokio::time::timeout(ANSWER_WITHIN, rx).await) {
                (Ok(()), Ok(Ok(r))) => r,
                _ => Reply {
                    enforced: false,
                    message: "the agent did not answer".into(),
                },
            }
        }
    };
    let mut out = serde_json::to_string(&reply).map_err(io::Error::other)?;
    out.push('\n');
    write.write_all(out.as_bytes()).await
}
