//! Network sockets: TCP over IPv4 and IPv6, both sides ([`tcp_dump`], [`tcp_restore`]), the
//! socket options they carry ([`opts`]) and the network lock that keeps dumped connections'
//! packets away from a kernel without their socket ([`lock`]).

pub mod inject;
pub mod lock;
pub mod opts;
pub mod sock;
pub mod tcp_dump;
pub mod tcp_restore;
