//! `osgate reports tlsrpt`: one domain's RFC 8460 report of one day, from the state folder.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use osgate_core::tlsrpt::{Day, ReportMeta, render};

#[derive(Subcommand)]
pub(crate) enum ReportsCommand {
    /// Print the RFC 8460 (SMTP TLS Reporting) JSON report of one policy domain and UTC day,
    /// from this node's sessions (a running node writes its counts every few seconds).
    Tlsrpt(TlsrptArgs),
}

#[derive(Args)]
pub(crate) struct TlsrptArgs {
    /// The policy domain (the recipient domain).
    #[arg(long)]
    pub domain: String,
    /// The UTC day, YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    #[arg(short = 'c', long = "config", default_value = "/etc/osgate/node.toml")]
    pub config: PathBuf,
    #[command(flatten)]
    pub from: From,
}

/// Who the report is from.
#[derive(Args, Clone)]
pub(crate) struct From {
    /// `organization-name` (default: this host's name).
    #[arg(long)]
    pub organization: Option<String>,
    /// `contact-info` (default: postmaster@ the organization).
    #[arg(long)]
    pub contact: Option<String>,
}

impl From {
    pub fn meta(&self) -> ReportMeta {
        let organization = self
            .organization
            .clone()
            .unwrap_or_else(osgate_proto::host_name);
        let contact = self
            .contact
            .clone()
            .unwrap_or_else(|| format!("postmaster@{organization}"));
        ReportMeta {
            organization,
            contact,
        }
    }
}

pub(crate) fn run(command: ReportsCommand) -> Result<String, String> {
    let ReportsCommand::Tlsrpt(args) = command;
    let config = crate::config::Config::load(&args.config).map_err(|e| format!("config: {e}"))?;
    report(
        &config.node.state_dir,
        &args.domain,
        &args.date,
        &args.from.meta(),
    )
}

/// The report text from the day file under `state_dir`.
pub(crate) fn report(
    state_dir: &Path,
    domain: &str,
    date: &str,
    meta: &ReportMeta,
) -> Result<String, String> {
    let day = Day::parse(date).ok_or_else(|| format!("--date {date}: expected YYYY-MM-DD"))?;
    let domain = osgate_core::tlsrpt::domain_key(domain);
    let dir = super::Recorder::folder(state_dir);
    let domains = super::files::load(&dir, day)?;
    let aggregate = domains.get(&domain).cloned().unwrap_or_default();
    Ok(render(&domain, day, &aggregate, meta))
}
