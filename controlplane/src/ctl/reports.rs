//! `osgatectl reports tlsrpt`: the fleet-wide RFC 8460 report of one domain and day.

use clap::{Args, Subcommand};
use osgate_proto::pb;

use super::{Connection, Failure, client, from_status, usage};

#[derive(Subcommand)]
pub enum ReportsAction {
    /// Print the RFC 8460 (SMTP TLS Reporting) JSON report of one policy domain and UTC
    /// day, merged over the sessions of every node that reported them (viewer role).
    Tlsrpt(TlsrptArgs),
}

#[derive(Args)]
pub struct TlsrptArgs {
    /// The policy domain (the recipient domain).
    #[arg(long)]
    domain: String,
    /// The UTC day, YYYY-MM-DD.
    #[arg(long)]
    date: String,
    /// `organization-name` (default: this host's name).
    #[arg(long)]
    organization: Option<String>,
    /// `contact-info` (default: postmaster@ the organization).
    #[arg(long)]
    contact: Option<String>,
}

/// The report's text (the JSON; the nodes counted go to stderr).
pub async fn run(conn: &Connection, action: ReportsAction) -> Result<String, Failure> {
    let ReportsAction::Tlsrpt(args) = action;
    if osgate_core::tlsrpt::Day::parse(&args.date).is_none() {
        return Err(usage(format!("--date {}: expected YYYY-MM-DD", args.date)));
    }
    let organization = args.organization.unwrap_or_else(osgate_proto::host_name);
    let contact = args
        .contact
        .unwrap_or_else(|| format!("postmaster@{organization}"));
    let request = pb::TlsrptReportRequest {
        policy_domain: args.domain,
        date: args.date,
        organization,
        contact,
    };
    let mut admin = client(conn).await?;
    let reply = admin
        .get_tlsrpt_report(request)
        .await
        .map_err(|s| from_status(&conn.server, s))?
        .into_inner();
    eprintln!(
        "nodes counted: {}",
        match reply.nodes.is_empty() {
            true => "none".to_owned(),
            false => reply.nodes.join(", "),
        }
    );
    Ok(reply.json)
}
