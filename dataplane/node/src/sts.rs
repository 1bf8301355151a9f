//! MTA-STS (RFC 8461) for outbound SMTP: the resolver is osgate-dns's, shared with the control
//! plane (which fetches policies for the fleet); `osgate mta-sts` is here.

pub(crate) use osgate_dns::sts::*;

pub(crate) mod cli;
