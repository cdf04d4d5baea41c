//! The sandbox's traffic tool. `serve` answers every TCP connection and UDP datagram with
//! its own `NS/NAME`; `connect` opens connections and prints one line per attempt:
//! `ok NS/NAME` or `fail REASON`. Both run inside sandbox network namespaces only.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netpol_tests::sctp;

#[derive(Parser)]
#[command(about = "netpol sandbox traffic tool: answers and opens TCP/UDP connections")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer on the given ports until killed.
    Serve {
        /// What to answer with (`NS/NAME`).
        #[arg(long)]
        name: String,
        /// Address to listen on; `::` also takes IPv4.
        #[arg(long, default_value = "::")]
        bind: IpAddr,
        #[arg(long = "tcp")]
        tcp: Vec<u16>,
        #[arg(long = "udp")]
        udp: Vec<u16>,
        /// SCTP ports, answered with crafted INIT-ACKs over a raw socket.
        #[arg(long = "sctp")]
        sctp: Vec<u16>,
        /// TCP ports that echo every line back (for `stream`).
        #[arg(long = "echo")]
        echo: Vec<u16>,
    },
    /// One long TCP connection: a line every `interval_ms` for `duration_ms`, each echoed.
    /// Prints a JSON summary, with this namespace's TCP retransmissions meanwhile.
    Stream {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        #[arg(long)]
        duration_ms: u64,
    },
    /// New TCP connections, one after another, until one has the expected outcome; prints
    /// when (ns since the epoch) the attempt that showed it started.
    Flip {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        /// `allowed` or `blocked`
        #[arg(long)]
        expect: String,
        /// An attempt without a connection after this long counts as blocked.
        #[arg(long, default_value_t = 5)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 5000)]
        give_up_ms: u64,
    },
    /// Connect `attempts` times, each from a new source port.
    Connect {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            bind,
            tcp,
            udp,
            sctp,
            echo,
        } => serve(&name, bind, &tcp, &udp, &sctp, &echo),
        Cmd::Stream {
            addr,
            port,
            interval_ms,
            duration_ms,
        } => stream(SocketAddr::new(addr, port), interval_ms, duration_ms),
        Cmd::Flip {
            addr,
            port,
            expect,
            timeout_ms,
            give_up_ms,
        } => flip(SocketAddr::new(addr, port), &expect, timeout_ms, give_up_ms),
        Cmd::Connect {
            addr,
            port,
            protocol,
            attempts,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let target = SocketAddr::new(addr, port);
            let once = match protocol.as_str() {
                "TCP" => tcp_once,
                "UDP" => udp_once,
                "SCTP" => sctp_once,
                other => bail!("protocol {other} is not supported by this probe"),
            };
            // Attempts run at once, each on its own socket (so its own source port).
            let results: Vec<Result<String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..attempts)
                    .map(|_| s.spawn(move || once(target, timeout)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("attempt panicked")))
                    })
                    .collect()
            });
            for r in results {
                match r {
                    Ok(who) => println!("ok {who}"),
                    Err(e) => println!("fail {e:#}"),
                }
            }
            Ok(())
        }
    }
}

fn serve(
    name: &str,
    bind: IpAddr,
    tcp: &[u16],
    udp: &[u16],
    sctp: &[u16],
    echo: &[u16],
) -> Result<()> {
    let answer = format!("{name}\n");
    let mut threads = Vec::new();
    for port in echo {
        let l = TcpListener::bind((bind, *port)).with_context(|| format!("echo {bind}:{port}"))?;
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(mut w) = s.try_clone() else { return };
                    let mut r = std::io::BufReader::new(s);
                    let mut line = String::new();
                    use std::io::BufRead;
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if w.write_all(line.as_bytes()).is_err() {
                            break;
                        }
                        line.clear();
                    }
                });
            }
        }));
    }
    if !sctp.is_empty() {
        for v6 in [false, true] {
            let (name, ports) = (name.to_string(), sctp.to_vec());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = sctp::serve(&name, &ports, v6) {
                    eprintln!("sctp server (ipv6: {v6}): {e}");
                }
            }));
        }
    }
    for port in tcp {
        let l = TcpListener::bind((bind, *port)).with_context(|| format!("tcp {bind}:{port}"))?;
        let answer = answer.clone();
        threads.push(std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(answer.as_bytes());
                });
            }
        }));
    }
    for port in udp {
        let sock = UdpSocket::bind((bind, *port)).with_context(|| format!("udp {bind}:{port}"))?;
        let answer = answer.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(answer.as_bytes(), from);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn tcp_once(target: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello\n").context("send")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 128];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) => return Err(e).context("receive"),
        }
    }
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    if text.is_empty() {
        bail!("empty answer");
    }
    Ok(text)
}

/// Crafted INIT from a port of our own choosing (raw sockets have none).
fn sctp_once(target: SocketAddr, timeout: Duration) -> Result<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(n.wrapping_mul(40_503));
    let sport = 32768 + (seed % 28000) as u16;
    let tag = seed | 1;
    sctp::probe(target, timeout, sport, tag).context("sctp")
}

fn udp_once(target: SocketAddr, timeout: Duration) -> Result<String> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"hello\n").context("send")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).context("receive")?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// TCP RetransSegs of this network namespace.
fn retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(head), Some(vals)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn stream(target: SocketAddr, interval_ms: u64, duration_ms: u64) -> Result<()> {
    use std::io::BufRead;
    let before = retransmits();
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = std::io::BufReader::new(s);
    let start = std::time::Instant::now();
    let (mut sent, mut echoed, mut max_rtt_ms) = (0u64, 0u64, 0f64);
    let mut error = None;
    while start.elapsed() < Duration::from_millis(duration_ms) {
        let t = std::time::Instant::now();
        let msg = format!("{sent}\n");
        if let Err(e) = w.write_all(msg.as_bytes()) {
            error = Some(format!("send: {e}"));
            break;
        }
        sent += 1;
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 && line == msg => echoed += 1,
            Ok(_) => {
                error = Some(format!("bad or no echo after {sent} lines"));
                break;
            }
            Err(e) => {
                error = Some(format!("receive: {e}"));
                break;
            }
        }
        max_rtt_ms = f64::max(max_rtt_ms, t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    let out = serde_json::json!({
        "sent": sent, "echoed": echoed, "max_rtt_ms": max_rtt_ms,
        "retransmits": retransmits().saturating_sub(before), "error": error,
    });
    println!("{out}");
    Ok(())
}

fn flip(target: SocketAddr, expect: &str, timeout_ms: u64, give_up_ms: u64) -> Result<()> {
    let want_allowed = match expect {
        "allowed" => true,
        "blocked" => false,
        other => bail!("--expect allowed|blocked, not {other:?}"),
    };
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(give_up_ms) {
        let at = std::time::SystemTime::now();
        let ok = TcpStream::connect_timeout(&target, Duration::from_millis(timeout_ms)).is_ok();
        if ok == want_allowed {
            let ns = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            println!("{ns}");
            return Ok(());
        }
    }
    bail!("still not {expect} after {give_up_ms} ms")
}
