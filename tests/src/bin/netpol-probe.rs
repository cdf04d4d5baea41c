//! The sandbox's traffic tool. `serve` answers every TCP connection and UDP datagram with
//! its own `NS/NAME`; `connect` opens connections and prints one line per attempt:
//! `ok NS/NAME` or `fail REASON`. Both run inside sandbox network namespaces only.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netpol_tests::traffic::{self, Outcome, TcpConn};
use netpol_tests::{flood, rawtcp, sctp};

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
        /// TCP and UDP ports that echo every line (datagram) back, `after MS ...` ones
        /// MS ms later (for `victim`).
        #[arg(long = "echo-after")]
        echo_after: Vec<u16>,
    },
    /// One TCP connection and one UDP socket kept alive with busy periods (a request
    /// every `interval_ms` for `busy_ms`) and idle ones (`idle_ms` of silence, then a
    /// request answered at once and one answered `delay_ms` later). Prints `ready`, then
    /// a JSON summary; an answer later than `timeout_ms` after it was due is lost.
    Victim {
        #[arg(long)]
        addr: IpAddr,
        /// Served with `serve --echo-after`, TCP and UDP.
        #[arg(long)]
        port: u16,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 2000)]
        busy_ms: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 3000)]
        idle_ms: u64,
        #[arg(long, default_value_t = 3000)]
        delay_ms: u64,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// New UDP flows as fast as possible: from `sockets` source ports per thread to every
    /// port of `first_port..=last_port`, round after round, for `duration_ms`. Prints a
    /// JSON summary.
    Flood {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long, default_value_t = 1024)]
        first_port: u16,
        #[arg(long, default_value_t = 65535)]
        last_port: u16,
        /// Source ports per thread.
        #[arg(long, default_value_t = 16)]
        sockets: usize,
        /// Sending threads; 0: one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        duration_ms: u64,
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
    /// New TCP connections one after another for `duration_ms`, each opened, asked one
    /// request, answered and closed (netperf's TCP_CRR). Prints a JSON summary with the
    /// rate.
    Crr {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        duration_ms: u64,
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
        /// Source address to bind (nodes and external hosts have several).
        #[arg(long)]
        source: Option<IpAddr>,
        /// After the request, this many bytes each way.
        #[arg(long, default_value_t = 0)]
        bytes: usize,
    },
    /// One connection held open: prints the outcome of its opening request, then answers
    /// each stdin line `use` with the outcome of one more request; `close` ends it with a
    /// FIN, `abort` (and end of input) with a reset.
    Hold {
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long)]
        source: Option<IpAddr>,
    },
    /// Sends one crafted TCP segment that belongs to no connection.
    Stray {
        #[arg(long)]
        source: IpAddr,
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        sport: u16,
        /// A, PA, F, R, SA or empty.
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        flags: String,
    },
    /// Packet capture: prints `ready` once listening, then `seen` if the segment arrives
    /// (on `iface`, or any interface) within the timeout, else `unseen`.
    Capture {
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        source: IpAddr,
        #[arg(long)]
        addr: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        sport: u16,
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        flags: String,
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
            echo_after,
        } => serve(&name, bind, &tcp, &udp, &sctp, &echo, &echo_after),
        Cmd::Victim {
            addr,
            port,
            duration_ms,
            busy_ms,
            interval_ms,
            idle_ms,
            delay_ms,
            timeout_ms,
        } => flood::victim(
            SocketAddr::new(addr, port),
            SocketAddr::new(addr, port),
            flood::Schedule {
                duration: Duration::from_millis(duration_ms),
                busy: Duration::from_millis(busy_ms),
                interval: Duration::from_millis(interval_ms),
                idle: Duration::from_millis(idle_ms),
                delay: Duration::from_millis(delay_ms),
                timeout: Duration::from_millis(timeout_ms),
            },
        ),
        Cmd::Flood {
            addr,
            first_port,
            last_port,
            sockets,
            threads,
            duration_ms,
        } => flood::flood(
            addr,
            first_port,
            last_port,
            sockets,
            if threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                threads
            },
            Duration::from_millis(duration_ms),
        ),
        Cmd::Crr {
            addr,
            port,
            duration_ms,
        } => crr(SocketAddr::new(addr, port), duration_ms),
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
            source,
            bytes,
        } => {
            let how = Attempt {
                target: SocketAddr::new(addr, port),
                source,
                timeout: Duration::from_millis(timeout_ms),
                bytes,
            };
            connect(&how, &protocol, attempts)
        }
        Cmd::Hold {
            addr,
            port,
            protocol,
            timeout_ms,
            source,
        } => hold(
            &Attempt {
                target: SocketAddr::new(addr, port),
                source,
                timeout: Duration::from_millis(timeout_ms),
                bytes: 0,
            },
            &protocol,
        ),
        Cmd::Stray {
            source,
            addr,
            port,
            sport,
            flags,
        } => {
            rawtcp::send(source, addr, sport, port, rawtcp::Flags::parse(&flags)?)?;
            println!("sent");
            Ok(())
        }
        Cmd::Capture {
            iface,
            source,
            addr,
            port,
            sport,
            flags,
            timeout_ms,
        } => {
            let want = rawtcp::Wanted {
                src: source,
                dst: addr,
                sport,
                dport: port,
                flags: rawtcp::Flags::parse(&flags)?,
            };
            capture(iface.as_deref(), &want, Duration::from_millis(timeout_ms))
        }
    }
}

/// Where and how one connection attempt goes.
#[derive(Clone, Copy)]
struct Attempt {
    target: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
    bytes: usize,
}

/// `attempts` connections at once, each on its own socket (so its own source port); one
/// outcome line each.
fn connect(how: &Attempt, protocol: &str, attempts: u32) -> Result<()> {
    let once = match protocol {
        "TCP" => tcp_once,
        "UDP" => udp_once,
        "SCTP" if how.bytes == 0 && how.source.is_none() => sctp_once,
        "SCTP" => bail!("SCTP probes take no --bytes and no --source"),
        other => bail!("protocol {other} is not supported by this probe"),
    };
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..attempts)
            .map(|_| s.spawn(move || Outcome::from_result(once(how))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Error("attempt panicked".into()))
            })
            .collect()
    });
    for r in results {
        println!("{}", r.line());
    }
    Ok(())
}

/// A held connection, driven over stdin/stdout.
enum Held {
    Tcp(TcpConn),
    Udp(std::net::UdpSocket),
}

fn hold(how: &Attempt, protocol: &str) -> Result<()> {
    let opened = match protocol {
        "TCP" => traffic::tcp_connect(how.target, how.source, how.timeout)
            .and_then(TcpConn::new)
            .map(Held::Tcp),
        "UDP" => traffic::udp_socket(how.target, how.source).map(Held::Udp),
        other => bail!("held connections are TCP or UDP, not {other}"),
    };
    let mut held = match opened {
        Ok(h) => h,
        Err(e) => {
            println!("{}", traffic::classify(&e).line());
            return Ok(());
        }
    };
    let mut stale = 0;
    let mut request = |held: &mut Held| {
        let r = match held {
            Held::Tcp(c) => c.request(0, how.timeout, stale),
            Held::Udp(s) => traffic::udp_request(s, 0, how.timeout),
        };
        let outcome = Outcome::from_result(r);
        // A TCP request that got no answer may still be answered later.
        stale = if matches!(outcome, Outcome::Ok(_)) {
            0
        } else {
            stale + 1
        };
        println!("{}", outcome.line());
    };
    request(&mut held);
    for line in std::io::stdin().lines() {
        match line?.trim() {
            "use" => request(&mut held),
            "close" => return finish(held, false),
            _ => return finish(held, true),
        }
    }
    finish(held, true)
}

fn finish(held: Held, abort: bool) -> Result<()> {
    if let Held::Tcp(c) = held {
        if abort { c.abort()? } else { c.close()? }
    }
    println!("closed");
    Ok(())
}

fn capture(iface: Option<&str>, want: &rawtcp::Wanted, timeout: Duration) -> Result<()> {
    let cap = rawtcp::Capture::open(iface)?;
    println!("ready");
    std::io::stdout().flush()?;
    let seen = cap.wait_for(want, std::time::Instant::now() + timeout)?;
    println!("{}", if seen { "seen" } else { "unseen" });
    Ok(())
}

fn serve(
    name: &str,
    bind: IpAddr,
    tcp: &[u16],
    udp: &[u16],
    sctp: &[u16],
    echo: &[u16],
    echo_after: &[u16],
) -> Result<()> {
    let mut threads = Vec::new();
    for port in echo_after {
        let l = TcpListener::bind((bind, *port))
            .with_context(|| format!("echo-after tcp {bind}:{port}"))?;
        threads.push(std::thread::spawn(move || flood::serve_tcp(l)));
        let u = UdpSocket::bind((bind, *port))
            .with_context(|| format!("echo-after udp {bind}:{port}"))?;
        threads.push(std::thread::spawn(move || flood::serve_udp(u)));
    }
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
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = traffic::serve_tcp_conn(s, &name);
                });
            }
        }));
    }
    for port in udp {
        let sock = UdpSocket::bind((bind, *port)).with_context(|| format!("udp {bind}:{port}"))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || traffic::serve_udp(sock, &name)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn tcp_once(how: &Attempt) -> Result<String> {
    let s = traffic::tcp_connect(how.target, how.source, how.timeout)?;
    TcpConn::new(s)?.request(how.bytes, how.timeout, 0)
}

/// Crafted INIT from a port of our own choosing (raw sockets have none).
fn sctp_once(how: &Attempt) -> Result<String> {
    let (target, timeout) = (how.target, how.timeout);
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(n.wrapping_mul(40_503));
    // Above the ephemeral range (32768-60999), like every port the probes choose.
    let sport = 61000 + (seed % 4500) as u16;
    let tag = seed | 1;
    sctp::probe(target, timeout, sport, tag).context("sctp")
}

fn udp_once(how: &Attempt) -> Result<String> {
    let s = traffic::udp_socket(how.target, how.source)?;
    traffic::udp_request(&s, how.bytes, how.timeout)
}

use flood::retransmits;

fn crr(target: SocketAddr, duration_ms: u64) -> Result<()> {
    let timeout = Duration::from_secs(1);
    let start = std::time::Instant::now();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut error = None;
    while start.elapsed() < Duration::from_millis(duration_ms) {
        let one = traffic::tcp_connect(target, None, timeout).and_then(|s| {
            let mut c = TcpConn::new(s)?;
            c.request(0, timeout, 0)?;
            c.close()
        });
        match one {
            Ok(()) => done += 1,
            Err(e) => {
                failed += 1;
                error = Some(format!("{e:#}"));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "connections": done, "failed": failed, "seconds": seconds,
        "per_second": done as f64 / seconds, "error": error,
    });
    println!("{out}");
    Ok(())
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
