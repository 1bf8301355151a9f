//! Files that survive kill -9 and power loss (osgate-dns's, shared with the MTA-STS cache).

pub use osgate_dns::durable::write_atomic;
