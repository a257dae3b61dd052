//! A lab real server: answers HTTP/1.1 (keep-alive) on a TCP port and datagrams on a UDP port
//! with its own name, so tests can see which real server answered.
//!
//! `hlb-realserver NAME [--tcp ADDR:PORT]... [--udp ADDR:PORT]...`
//! HTTP answers `NAME\n`; `GET /slow` waits 200 ms first; UDP echoes `NAME:<payload>`.
//! Run it inside a lab namespace (`Lab::spawn`).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().expect("usage: hlb-realserver NAME [--tcp ADDR] [--udp ADDR]");
    let mut handles = Vec::new();
    while let Some(flag) = args.next() {
        let addr = args.next().expect("address after flag");
        let name = name.clone();
        match flag.as_str() {
            "--tcp" => {
                let l = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
                handles.push(std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        let name = name.clone();
                        std::thread::spawn(move || serve_http(s, &name));
                    }
                }));
            }
            "--udp" => {
                let s = UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
                handles.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        let mut out = format!("{name}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        let _ = s.send_to(&out, from);
                    }
                }));
            }
            f => panic!("unknown flag {f}"),
        }
    }
    eprintln!("hlb-realserver {name} ready");
    for h in handles {
        let _ = h.join();
    }
}

fn serve_http(s: TcpStream, name: &str) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        let mut req = String::new();
        match r.read_line(&mut req) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        let mut content_len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let hl = h.to_ascii_lowercase();
            if hl.starts_with("connection:") && hl.contains("close") {
                close = true;
            }
            if let Some(v) = hl.strip_prefix("content-length:") {
                content_len = v.trim().parse().unwrap_or(0);
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        if content_len > 0 {
            let mut body = vec![0u8; content_len.min(1 << 20)];
            if std::io::Read::read_exact(&mut r, &mut body).is_err() {
                return;
            }
        }
        if req.starts_with("GET /slow") {
            std::thread::sleep(Duration::from_millis(200));
        }
        let body = format!("{name}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
            body
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}
