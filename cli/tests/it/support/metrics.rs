//! Scraping the Prometheus `/metrics` page a Haven process serves.

use std::io::{Read, Write};

/// `GET /metrics` over plain HTTP from `127.0.0.1:port`; returns the whole response.
pub fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}
