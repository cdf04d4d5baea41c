//! The probe's client and server sides. A request is the line `hello` or `hello N`; the
//! server answers with its name on one line and, for `hello N`, then reads N bytes and
//! sends N bytes back (over UDP: one datagram of N bytes each way, the request line at
//! its start). TCP servers answer any number of requests per connection, so connections
//! can be held across steps.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How one attempt ended, as the probe prints it (one line) and the runner reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, by this server.
    Ok(String),
    /// No answer within the timeout, and no refusal.
    Silent(String),
    /// A reset or an ICMP unreachable: something answered "no".
    Refused(String),
    /// Anything else (a partial answer, a local error).
    Error(String),
}

impl Outcome {
    pub fn line(&self) -> String {
        match self {
            Outcome::Ok(s) => format!("ok {s}"),
            Outcome::Silent(s) => format!("silent {s}"),
            Outcome::Refused(s) => format!("refused {s}"),
            Outcome::Error(s) => format!("error {s}"),
        }
    }

    pub fn parse(line: &str) -> Outcome {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.to_string();
        match word {
            "ok" => Outcome::Ok(rest),
            "silent" => Outcome::Silent(rest),
            "refused" => Outcome::Refused(rest),
            "error" => Outcome::Error(rest),
            _ => Outcome::Error(format!("unreadable probe output {line:?}")),
        }
    }

    pub fn from_result(r: Result<String>) -> Outcome {
        match r {
            Ok(who) => Outcome::Ok(who),
            Err(e) => classify(&e),
        }
    }
}

/// Timeouts are silence; resets and ICMP unreachables are refusals.
pub fn classify(e: &anyhow::Error) -> Outcome {
    let text = format!("{e:#}");
    let io = e.chain().find_map(|c| c.downcast_ref::<io::Error>());
    match io.map(io::Error::kind) {
        Some(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Outcome::Silent(text),
        Some(
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable,
        ) => Outcome::Refused(text),
        _ => Outcome::Error(text),
    }
}

fn timed_out(what: &str) -> anyhow::Error {
    anyhow::Error::new(io::Error::new(io::ErrorKind::TimedOut, what.to_string()))
}

fn left(deadline: Instant) -> Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(timed_out("timed out"));
    }
    Ok(d)
}

/// A TCP connection from `source` (any port) when given.
pub fn tcp_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect_timeout(&target, timeout).context("connect");
    };
    let domain = if target.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .context("socket")?;
    s.bind(&SocketAddr::new(src, 0).into())
        .with_context(|| format!("binding {src}"))?;
    s.connect_timeout(&target.into(), timeout)
        .context("connect")?;
    Ok(s.into())
}

/// One TCP connection's two halves, for any number of requests.
pub struct TcpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl TcpConn {
    pub fn new(s: TcpStream) -> Result<Self> {
        Ok(TcpConn {
            writer: s.try_clone().context("cloning the socket")?,
            reader: BufReader::new(s),
        })
    }

    /// Sends a request and reads its answer (and the bytes, if any) within `timeout`.
    /// `stale` answers of earlier requests that timed out are read and skipped first.
    pub fn request(&mut self, bytes: usize, timeout: Duration, stale: usize) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let req = if bytes > 0 {
            format!("hello {bytes}\n")
        } else {
            "hello\n".to_string()
        };
        self.writer.set_write_timeout(Some(left(deadline)?))?;
        self.writer.write_all(req.as_bytes()).context("send")?;
        let mut who = String::new();
        for _ in 0..=stale {
            who = self.read_line(deadline)?;
        }
        if bytes > 0 {
            // An answer was seen: whatever fails now is no silence.
            self.transfer(bytes, deadline)
                .map_err(|e| anyhow!("answered by {who}, then {e:#}"))?;
        }
        Ok(who)
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String> {
        let mut line = String::new();
        self.reader
            .get_ref()
            .set_read_timeout(Some(left(deadline)?))?;
        let n = self.reader.read_line(&mut line).context("receive")?;
        if n == 0 || !line.ends_with('\n') {
            bail!("connection closed without an answer");
        }
        Ok(line.trim().to_string())
    }

    fn transfer(&mut self, bytes: usize, deadline: Instant) -> Result<()> {
        let chunk = vec![b'c'; 16384];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            self.writer.set_write_timeout(Some(left(deadline)?))?;
            self.writer
                .write_all(&chunk[..n])
                .with_context(|| format!("sending bytes ({sent} of {bytes} sent)"))?;
            sent += n;
        }
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        while got < bytes {
            self.reader
                .get_ref()
                .set_read_timeout(Some(left(deadline)?))?;
            let want = buf.len().min(bytes - got);
            let n = self
                .reader
                .read(&mut buf[..want])
                .with_context(|| format!("receiving bytes ({got} of {bytes} received)"))?;
            if n == 0 {
                bail!("connection closed after {got} of {bytes} bytes");
            }
            got += n;
        }
        Ok(())
    }

    /// Ends the connection with a reset (SO_LINGER 0), not a FIN.
    pub fn abort(self) -> Result<()> {
        let s = socket2::SockRef::from(&self.writer);
        s.set_linger(Some(Duration::ZERO))?;
        Ok(())
    }

    pub fn close(self) -> Result<()> {
        self.writer.shutdown(std::net::Shutdown::Both)?;
        Ok(())
    }
}

/// A UDP socket bound to one source port (and `source`, when given), connected to `target`.
pub fn udp_socket(target: SocketAddr, source: Option<IpAddr>) -> Result<UdpSocket> {
    let ip = source.unwrap_or(match target {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    });
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
    s.connect(target).context("connect")?;
    Ok(s)
}

/// One request datagram (of `bytes` bytes when non-zero) and its answer. The request is
/// sent again every quarter of the timeout, and at once when the kernel reports that the
/// path MTU shrank (EMSGSIZE), as DNS clients do.
pub fn udp_request(s: &UdpSocket, bytes: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut req = if bytes > 0 {
        format!("hello {bytes}\n").into_bytes()
    } else {
        b"hello\n".to_vec()
    };
    if bytes > 0 {
        req.resize(bytes.max(req.len()), b'u');
    }
    drain(s)?;
    let mut buf = vec![0u8; 65536];
    loop {
        s.send(&req).context("send")?;
        let resend_at = (Instant::now() + timeout / 4).min(deadline);
        let wait = resend_at.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match s.recv(&mut buf) {
            Ok(n) => return answer_of(&buf[..n], bytes),
            // The path MTU shrank: send again at once.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(e).context("receive");
                }
            }
            Err(e) => return Err(e).context("receive"),
        }
    }
}

/// Answers of earlier requests that came late are not answers to this one.
fn drain(s: &UdpSocket) -> Result<()> {
    s.set_nonblocking(true)?;
    let mut buf = vec![0u8; 65536];
    while s.recv(&mut buf).is_ok() {}
    s.set_nonblocking(false)?;
    Ok(())
}

fn answer_of(data: &[u8], bytes: usize) -> Result<String> {
    let text = String::from_utf8_lossy(data);
    let who = text.lines().next().unwrap_or_default().trim().to_string();
    if who.is_empty() {
        bail!("empty answer");
    }
    if bytes > 0 && data.len() != bytes {
        bail!("answered by {who} with {} bytes, not {bytes}", data.len());
    }
    Ok(who)
}

/// The number of bytes a request line asks for.
fn requested_bytes(line: &str) -> Result<usize> {
    match line.trim().split_once(' ') {
        None => Ok(0),
        Some((_, n)) => n
            .trim()
            .parse()
            .map_err(|_| anyhow!("bad request {line:?}")),
    }
}

/// Serves one TCP connection: requests until the client goes away.
pub fn serve_tcp_conn(s: TcpStream, name: &str) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let bytes = requested_bytes(&line)?;
        w.write_all(format!("{name}\n").as_bytes())?;
        if bytes > 0 {
            let mut sink = vec![0u8; bytes];
            r.read_exact(&mut sink)?;
            w.write_all(&vec![b's'; bytes])?;
        }
    }
}

/// Answers every datagram of `sock` until it fails.
pub fn serve_udp(sock: UdpSocket, name: &str) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let line = String::from_utf8_lossy(&buf[..n.min(64)]).to_string();
        let first = line.lines().next().unwrap_or_default();
        let bytes = requested_bytes(first).unwrap_or(0);
        let mut answer = format!("{name}\n").into_bytes();
        if bytes > 0 {
            answer.resize(bytes.max(answer.len()), b's');
        }
        let _ = sock.send_to(&answer, from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_classify() {
        for o in [
            Outcome::Ok("x/a".into()),
            Outcome::Silent("connect: timed out".into()),
            Outcome::Refused("connect: refused".into()),
        ] {
            assert_eq!(Outcome::parse(&o.line()), o);
        }
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            classify(&e.context("connect")),
            Outcome::Refused(_)
        ));
        assert!(matches!(classify(&timed_out("x")), Outcome::Silent(_)));
        assert_eq!(requested_bytes("hello 4000\n").unwrap(), 4000);
        assert_eq!(requested_bytes("hello\n").unwrap(), 0);
    }
}
