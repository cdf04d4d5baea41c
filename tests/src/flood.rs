//! The probe's side of the `flood` scenario: a victim that keeps one TCP connection and
//! one UDP exchange alive with busy and idle periods, the server that answers it (at once,
//! or after a delay, so that the first packet after an idle period comes from the server),
//! and an attacker that sends new UDP flows as fast as it can.
//!
//! A request is one line `SEQ` (answered at once) or `after MS SEQ` (answered `MS` ms
//! later); the answer is the same line. Over UDP one datagram each way.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// How long the server waits before answering `line`, if it asks for a delay.
fn delay_of(line: &str) -> Option<Duration> {
    let rest = line.strip_prefix("after ")?;
    let ms: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// TCP: every line echoed back, after its delay when it asks for one (in order).
pub fn serve_tcp(l: TcpListener) {
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(mut w) = s.try_clone() else { return };
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some(d) = delay_of(line.trim()) {
                    std::thread::sleep(d);
                }
                if w.write_all(line.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
}

/// UDP: every datagram echoed back to its sender, after its delay when it asks for one.
pub fn serve_udp(sock: UdpSocket) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let msg = buf[..n].to_vec();
        match delay_of(String::from_utf8_lossy(&msg).trim()) {
            Some(d) => {
                let Ok(s) = sock.try_clone() else { continue };
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    let _ = s.send_to(&msg, from);
                });
            }
            None => {
                let _ = sock.send_to(&msg, from);
            }
        }
    }
}

/// What the victim does, and when.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub duration: Duration,
    /// A request every `interval` for `busy`...
    pub busy: Duration,
    pub interval: Duration,
    /// ...then nothing for `idle`, then one request answered at once (the pod speaks
    /// first after the silence), then one answered `delay` later (the server speaks
    /// first after a silence of `delay`).
    pub idle: Duration,
    pub delay: Duration,
    /// An answer later than this after it was due counts as lost.
    pub timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// During a busy period.
    Busy,
    /// The first request after an idle period: the pod sends first.
    AfterIdle,
    /// Answered after a delay: the server sends first after a silence.
    Delayed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Busy => "busy",
            Kind::AfterIdle => "after_idle",
            Kind::Delayed => "delayed",
        }
    }
}

/// One side of the victim: the requests it made and how they ended.
#[derive(Default)]
struct Tally {
    /// (kind, sent at since the victim started, ms; round trip beyond the asked delay,
    /// None when lost)
    requests: Vec<(Kind, u64, Option<f64>)>,
    /// Answers that arrived after their request was given up.
    late: u64,
    /// Why the connection ended before the schedule did.
    error: Option<String>,
}

impl Tally {
    fn json(&self) -> Value {
        let mut by_kind = serde_json::Map::new();
        for k in [Kind::Busy, Kind::AfterIdle, Kind::Delayed] {
            let of: Vec<_> = self.requests.iter().filter(|r| r.0 == k).collect();
            let answered = of.iter().filter(|r| r.2.is_some()).count();
            by_kind.insert(
                k.name().into(),
                json!({"sent": of.len(), "answered": answered, "lost": of.len() - answered}),
            );
        }
        let all: Vec<Value> = self
            .requests
            .iter()
            .map(|r| json!({"kind": r.0.name(), "t_ms": r.1, "answered": r.2.is_some()}))
            .collect();
        let max_rtt = self.requests.iter().filter_map(|r| r.2).fold(0.0, f64::max);
        let answered = self.requests.iter().filter(|r| r.2.is_some()).count();
        json!({
            "sent": self.requests.len(), "answered": answered,
            "lost": self.requests.len() - answered, "late": self.late,
            "max_rtt_ms": (max_rtt * 10.0).round() / 10.0,
            "by_kind": by_kind, "requests": all, "error": self.error,
        })
    }
}

/// The request transport: one TCP connection or one connected UDP socket.
trait Channel {
    fn send(&mut self, msg: &str) -> Result<()>;
    /// The next answer line before `deadline`; None on timeout. An error ends the
    /// connection.
    fn recv(&mut self, deadline: Instant) -> Result<Option<String>>;
}

struct Tcp {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// A line read in part when a wait ran out.
    pending: String,
}

impl Channel for Tcp {
    fn send(&mut self, msg: &str) -> Result<()> {
        self.w.write_all(msg.as_bytes()).context("send")
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<String>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        self.r.get_ref().set_read_timeout(Some(left))?;
        match self.r.read_line(&mut self.pending) {
            Ok(0) => anyhow::bail!("the server closed the connection"),
            Ok(_) if !self.pending.ends_with('\n') => {
                anyhow::bail!("the connection ended mid-line")
            }
            Ok(_) => Ok(Some(std::mem::take(&mut self.pending))),
            // What was read of a line stays pending; the next read completes it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).context("receive"),
        }
    }
}

struct Udp(UdpSocket);

impl Channel for Udp {
    fn send(&mut self, msg: &str) -> Result<()> {
        self.0.send(msg.as_bytes()).context("send")?;
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> Result<Option<String>> {
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.0.set_read_timeout(Some(left))?;
            match self.0.recv(&mut buf) {
                Ok(n) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // An ICMP error for an earlier datagram: not an answer, and no reason to
                // stop (UDP has no connection to break).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e).context("receive"),
            }
        }
    }
}

/// Sends one request and waits for its own answer, skipping late answers of earlier ones.
fn exchange(
    ch: &mut dyn Channel,
    tally: &mut Tally,
    start: Instant,
    seq: u64,
    kind: Kind,
    s: &Schedule,
) -> Result<()> {
    let delay = if kind == Kind::Delayed {
        s.delay
    } else {
        Duration::ZERO
    };
    let msg = if delay.is_zero() {
        format!("{seq}\n")
    } else {
        format!("after {} {seq}\n", delay.as_millis())
    };
    let sent = Instant::now();
    let t_ms = (sent - start).as_millis() as u64;
    ch.send(&msg)?;
    let deadline = sent + delay + s.timeout;
    loop {
        match ch.recv(deadline)? {
            Some(line) if line == msg => {
                let rtt = (sent.elapsed().saturating_sub(delay)).as_secs_f64() * 1000.0;
                tally.requests.push((kind, t_ms, Some(rtt)));
                return Ok(());
            }
            Some(_) => tally.late += 1,
            None => {
                tally.requests.push((kind, t_ms, None));
                return Ok(());
            }
        }
    }
}

fn run_schedule(ch: &mut dyn Channel, s: &Schedule, start: Instant, tally: &mut Tally) {
    let mut seq = 0u64;
    let mut step = |ch: &mut dyn Channel, tally: &mut Tally, kind: Kind| {
        seq += 1;
        exchange(ch, tally, start, seq, kind, s)
    };
    let result = (|| -> Result<()> {
        while start.elapsed() < s.duration {
            let busy_until = Instant::now() + s.busy;
            while Instant::now() < busy_until && start.elapsed() < s.duration {
                step(ch, tally, Kind::Busy)?;
                std::thread::sleep(s.interval);
            }
            if start.elapsed() + s.idle >= s.duration {
                break;
            }
            std::thread::sleep(s.idle);
            step(ch, tally, Kind::AfterIdle)?;
            step(ch, tally, Kind::Delayed)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tally.error = Some(format!("{e:#}"));
    }
}

/// TCP RetransSegs of this network namespace.
pub fn retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    snmp_retransmits(&text)
}

/// TCP RetransSegs in the text of a `/proc/net/snmp`.
pub fn snmp_retransmits(text: &str) -> u64 {
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

/// The victim: one TCP connection to `tcp` and one UDP socket to `udp`, each following
/// the schedule in its own thread. Prints `ready` once both are open, then a JSON summary.
pub fn victim(tcp: SocketAddr, udp: SocketAddr, s: Schedule) -> Result<()> {
    let before = retransmits();
    let stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(2)).context("connect")?;
    stream.set_nodelay(true)?;
    let mut t = Tcp {
        w: stream.try_clone()?,
        r: BufReader::new(stream),
        pending: String::new(),
    };
    let mut u = Udp(crate::traffic::udp_socket(udp, None)?);
    println!("ready");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let (tcp_tally, udp_tally) = std::thread::scope(|sc| {
        let th = sc.spawn(|| {
            let mut tally = Tally::default();
            run_schedule(&mut t, &s, start, &mut tally);
            tally
        });
        let mut ut = Tally::default();
        run_schedule(&mut u, &s, start, &mut ut);
        (th.join().unwrap_or_default(), ut)
    });
    let mut tcp_json = tcp_tally.json();
    tcp_json["retransmits"] = json!(retransmits().saturating_sub(before));
    println!("{}", json!({"tcp": tcp_json, "udp": udp_tally.json()}));
    Ok(())
}

/// The attacker: UDP datagrams from `sockets` source ports (per thread) to every port of
/// `first..=last` on `addr`, round after round, as fast as the kernel takes them, from
/// `threads` threads (so from every CPU), for `duration`. Every datagram of a round is a
/// flow of its own.
pub fn flood(
    addr: IpAddr,
    first: u16,
    last: u16,
    sockets: usize,
    threads: usize,
    duration: Duration,
) -> Result<()> {
    let bind: IpAddr = if addr.is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    let threads = threads.max(1);
    let per_thread: Vec<Vec<UdpSocket>> = (0..threads)
        .map(|_| {
            (0..sockets.max(1))
                .map(|_| UdpSocket::bind(SocketAddr::new(bind, 0)).context("bind"))
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|sc| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|socks| {
                sc.spawn(move || {
                    let payload = [b'f'; 16];
                    let (mut sent, mut errors) = (0u64, 0u64);
                    loop {
                        for port in first..=last {
                            for s in socks {
                                match s.send_to(&payload, SocketAddr::new(addr, port)) {
                                    Ok(_) => sent += 1,
                                    Err(_) => errors += 1,
                                }
                            }
                            if port % 64 == 0 && start.elapsed() >= duration {
                                return (sent, errors);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0)))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let sent: u64 = counts.iter().map(|c| c.0).sum();
    let errors: u64 = counts.iter().map(|c| c.1).sum();
    let space = (threads * sockets.max(1)) as u64 * (u64::from(last) - u64::from(first) + 1);
    println!(
        "{}",
        json!({"sent": sent, "send_errors": errors, "distinct_flows": sent.min(space),
               "threads": threads, "source_ports": threads * sockets.max(1),
               "seconds": (secs * 10.0).round() / 10.0, "per_second": (sent as f64 / secs).round()})
    );
    Ok(())
}
