//! Raft RPCs over plain TCP: length-prefixed JSON frames (`frame`), request/response
//! messages (`message`), the client side openraft drives (`client`), the server side that
//! feeds a local `Raft` (`server`), and per-peer fault injection (`fault`).

pub mod client;
pub mod fault;
pub mod frame;
pub mod message;
pub mod server;

pub use client::{
    CallError, Connection, NetworkFactory, PeerNetwork, RPC_TIMEOUT, SNAPSHOT_RPC_TIMEOUT,
};
pub use fault::{Fault, FaultTable};
pub use frame::{FrameError, MAX_FRAME_BYTES};
pub use message::{Request, Response, WriteRejection};
pub use server::spawn_server;
