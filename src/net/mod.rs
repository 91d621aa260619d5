//! Network sockets: TCP over IPv4 and IPv6, both sides ([`tcp_dump`], [`tcp_restore`]), the
//! socket options they carry ([`opts`]), the network lock that keeps dumped connections'
//! packets away from a kernel without their socket ([`lock`]) and the segments crest forges
//! to put a connection's FINs back ([`inject`]); sock_diag queries for what sockets do not
//! say themselves ([`diag`], [`inetdiag`], [`packetdiag`]).

pub mod diag;
pub mod inetdiag;
pub mod inject;
pub mod lock;
pub mod opts;
pub mod packetdiag;
pub mod sock;
pub mod tcp_dump;
pub mod tcp_restore;
