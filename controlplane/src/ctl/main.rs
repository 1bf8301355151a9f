//! `osgatectl`: administers an osgate control plane.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use osgate_core::crypto::{CryptoPolicy, KxGroup, TlsFloor};
use osgate_core::pin::SpkiPin;
use osgate_proto::connect::Target;
use osgate_proto::pb::{self, admin_client::AdminClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod capabilities;
mod output;
mod policy_file;
mod policy_toml;
mod reports;

#[derive(Parser)]
#[command(
    name = "osgatectl",
    version,
    about = "Administers an osgate control plane"
)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Connection {
    /// The control plane, host:port.
    #[arg(
        long,
        env = "OSGATE_SERVER",
        global = true,
        default_value = "127.0.0.1:7400"
    )]
    server: String,
    /// The control plane's key (sha256/<base64>), as `osgate keygen` printed it.
    #[arg(long, env = "OSGATE_SERVER_PIN", global = true)]
    server_pin: Option<String>,
    /// The control plane's certificate file (its key is pinned), instead of --server-pin.
    #[arg(
        long,
        env = "OSGATE_SERVER_CERT",
        global = true,
        conflicts_with = "server_pin"
    )]
    server_cert: Option<PathBuf>,
    /// A bearer token of an `[[admin]]`.
    #[arg(long, env = "OSGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A client certificate and key, for admins known by key.
    #[arg(long, env = "OSGATE_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, env = "OSGATE_KEY", global = true)]
    key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// `get policies` only: a policy file `apply -f` takes back.
    Toml,
}

#[derive(Subcommand)]
enum Command {
    /// Creates or updates the policies in FILE (TOML, `[[policy]]` with a `name` each).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show the changes and the peers they affect; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply a dangerous change: a global default to cleartext, or a lower level for
        /// peers of more nodes than the control plane's `confirm_nodes`.
        #[arg(long)]
        confirm: bool,
    },
    /// What `apply -f FILE` would change, and which peers of which nodes.
    Diff {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Lists resources.
    Get {
        #[arg(value_enum)]
        what: Kind,
        /// One resource (a policy or node name, or a peer for pins).
        name: Option<String>,
    },
    /// Deletes policies.
    Delete {
        names: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        confirm: bool,
    },
    /// Operator decisions on fleet pins.
    Pins {
        #[command(subcommand)]
        action: PinAction,
    },
    /// Registers and removes nodes.
    Nodes {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The fleet's capability caches (`get capabilities` lists them).
    Capabilities {
        #[command(subcommand)]
        action: capabilities::CapabilityAction,
    },
    /// Reports over the fleet's sessions.
    Reports {
        #[command(subcommand)]
        action: reports::ReportsAction,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Policies,
    Pins,
    Nodes,
    Audit,
    /// Per peer: the fleet ratchet, its reporters, the DANE cache, the nodes serving it.
    Capabilities,
}

#[derive(Subcommand)]
enum PinAction {
    /// Approves PEER's key SPKI: every node then requires it (an operator pin).
    Approve { peer: String, spki: String },
    /// Revokes PEER's key SPKI: every node refuses it.
    Revoke { peer: String, spki: String },
    /// Vouches for NEXT as PEER's next key: both work until the peer presents NEXT.
    Vouch {
        peer: String,
        spki: String,
        next: String,
    },
    /// Forgets the pins of PEER (or all, with --all --confirm).
    Delete {
        peer: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Registers a node by its key (--spki, or --node-cert with its certificate file).
    Register {
        name: String,
        #[arg(long, required_unless_present = "node_cert")]
        spki: Option<String>,
        #[arg(long, conflicts_with = "spki")]
        node_cert: Option<PathBuf>,
        /// host:port of its inbound listeners (repeatable): connections to them are
        /// authenticated by this node's key. An address of another node is refused.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// host:port of a peer the node serves (repeatable): its pin reports are accepted
        /// for these peers only.
        #[arg(long = "peer")]
        peers: Vec<String>,
    },
    /// Creates a one-time enrolment token for node NAME. The token, not the node, decides
    /// what the node's key covers: addresses the node advertises when it enrols are
    /// ignored (and noted in the audit log). An address of another node is refused.
    Enroll {
        name: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// host:port of the node's inbound listeners (repeatable); none by default.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// host:port of a peer the node serves (repeatable): its pin reports are accepted
        /// for these peers only.
        #[arg(long = "peer")]
        peers: Vec<String>,
    },
    /// Removes a node.
    Delete { name: String },
}

/// What went wrong, and what to do about it.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 64,
        message: message.into(),
    }
}

fn from_status(server: &str, status: tonic::Status) -> Failure {
    use tonic::Code;
    let hint = match status.code() {
        Code::Unauthenticated => {
            " (give a token with --token or OSGATE_TOKEN, or an admin key with --cert/--key)"
        }
        Code::PermissionDenied => " (ask for a token with role admin)",
        Code::Unavailable => " (is the control plane running, and is --server right?)",
        _ => "",
    };
    Failure {
        code: 1,
        message: format!("{server}: {}{hint}", status.message()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(usage(format!("cannot start: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("osgatectl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn client(
    conn: &Connection,
) -> Result<AdminClient<InterceptedService<Channel, Bearer>>, Failure> {
    let pin = match (&conn.server_pin, &conn.server_cert) {
        (Some(pin), _) => SpkiPin::parse(pin).map_err(|e| usage(format!("--server-pin: {e}")))?,
        (None, Some(cert)) => pin_of_file(cert)?,
        (None, None) => {
            return Err(usage(
                "the control plane's key is needed: --server-pin or OSGATE_SERVER_PIN (sha256/…, printed by `osgate keygen`), or --server-cert",
            ));
        }
    };
    let identity = match (&conn.cert, &conn.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| usage(format!("--cert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| usage(format!("--key {}: {e}", key.display())))?;
            Some((chain, key))
        }
        _ => None,
    };
    let crypto =
        CryptoPolicy::new(KxGroup::DEFAULT, TlsFloor::Tls13).map_err(|e| usage(e.to_string()))?;
    let tls = crypto
        .pinned_client(vec![pin], identity)
        .map_err(|e| usage(e.to_string()))?;
    let target = Target {
        address: conn.server.clone(),
        tls,
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
    };
    let channel = target.connect().await.map_err(|e| Failure {
        code: 1,
        message: format!(
            "{e} (is the control plane running, and are --server and --server-pin right?)"
        ),
    })?;
    let bearer = match &conn.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| usage("the token has characters a header cannot carry"))?,
        ),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(osgate_proto::MAX_MESSAGE_BYTES))
}

/// The pin of the key in the first certificate of a PEM file.
fn pin_of_file(path: &std::path::Path) -> Result<SpkiPin, Failure> {
    osgate_proto::connect::pin_of_certificate_file(path)
        .ok_or_else(|| usage(format!("{}: no readable PEM certificate", path.display())))
}

/// Adds the bearer token to every request.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert(osgate_proto::AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let policies = matches!(
        cli.command,
        Command::Get {
            what: Kind::Policies,
            ..
        }
    );
    if matches!(cli.output, Format::Toml) && !policies {
        return Err(usage(
            "-o toml is for `get policies` (a file `apply -f` takes back); use -o json",
        ));
    }
    let server = cli.conn.server.clone();
    let status = |s| from_status(&server, s);
    let out = output::Printer { format: cli.output };
    match cli.command {
        Command::Apply {
            file,
            dry_run,
            confirm,
        } => {
            let loaded = policy_file::load(&file).map_err(usage)?;
            let mut admin = client(&cli.conn).await?;
            let request = pb::ApplyPoliciesRequest {
                policies: loaded.policies,
                inbound: loaded.inbound,
                dry_run,
                confirm,
            };
            let reply = admin.apply_policies(request).await.map_err(status)?;
            out.apply(&reply.into_inner(), dry_run);
        }
        Command::Diff { file } => {
            let loaded = policy_file::load(&file).map_err(usage)?;
            let mut admin = client(&cli.conn).await?;
            let request = pb::ApplyPoliciesRequest {
                policies: loaded.policies,
                inbound: loaded.inbound,
                dry_run: true,
                confirm: false,
            };
            let reply = admin.apply_policies(request).await.map_err(status)?;
            out.apply(&reply.into_inner(), true);
        }
        Command::Get { what, name } => {
            let mut admin = client(&cli.conn).await?;
            let name = name.unwrap_or_default();
            match what {
                Kind::Policies => out.policies(
                    &admin
                        .list_policies(pb::ListRequest { name })
                        .await
                        .map_err(status)?
                        .into_inner(),
                ),
                Kind::Pins => out.pins(
                    &admin
                        .list_pins(pb::ListRequest { name })
                        .await
                        .map_err(status)?
                        .into_inner(),
                ),
                Kind::Nodes => out.nodes(
                    &admin
                        .list_nodes(pb::ListRequest { name })
                        .await
                        .map_err(status)?
                        .into_inner(),
                ),
                Kind::Capabilities => capabilities::print(
                    cli.output,
                    &admin
                        .get_capabilities(pb::ListRequest { name })
                        .await
                        .map_err(status)?
                        .into_inner(),
                ),
                Kind::Audit => {
                    let request = pb::AuditRequest {
                        since_revision: 0,
                        limit: 1000,
                    };
                    out.audit(
                        &admin
                            .list_audit(request)
                            .await
                            .map_err(status)?
                            .into_inner(),
                    );
                }
            }
        }
        Command::Delete {
            names,
            all,
            dry_run,
            confirm,
        } => {
            if names.is_empty() && !all {
                return Err(usage("name the policies to delete, or --all"));
            }
            let mut admin = client(&cli.conn).await?;
            let request = pb::DeletePoliciesRequest {
                names,
                all,
                dry_run,
                confirm,
            };
            let reply = admin.delete_policies(request).await.map_err(status)?;
            out.apply(&reply.into_inner(), dry_run);
        }
        Command::Pins { action } => {
            let mut admin = client(&cli.conn).await?;
            let reply = match action {
                PinAction::Approve { peer, spki } => {
                    admin.approve_pin(pb::PinRequest { peer, spki }).await
                }
                PinAction::Revoke { peer, spki } => {
                    admin.revoke_pin(pb::PinRequest { peer, spki }).await
                }
                PinAction::Vouch { peer, spki, next } => {
                    admin.vouch_pin(pb::VouchRequest { peer, spki, next }).await
                }
                PinAction::Delete { peer, all, confirm } => {
                    let peer = peer.unwrap_or_default();
                    admin
                        .delete_pins(pb::DeletePinsRequest { peer, all, confirm })
                        .await
                }
            };
            out.apply(&reply.map_err(status)?.into_inner(), false);
        }
        Command::Nodes { action } => {
            let mut admin = client(&cli.conn).await?;
            match action {
                NodeAction::Register {
                    name,
                    spki,
                    node_cert,
                    addresses,
                    peers,
                } => {
                    let spki = match (spki, node_cert) {
                        (Some(spki), _) => spki,
                        (None, Some(cert)) => pin_of_file(&cert)?.to_string(),
                        (None, None) => return Err(usage("give --spki or --node-cert")),
                    };
                    let key = pb::NodeKey {
                        name,
                        spki,
                        addresses,
                        peers,
                        requires: Vec::new(),
                    };
                    let reply = admin
                        .register_node(pb::RegisterNodeRequest { key: Some(key) })
                        .await;
                    out.apply(&reply.map_err(status)?.into_inner(), false);
                }
                NodeAction::Enroll {
                    name,
                    ttl,
                    addresses,
                    peers,
                } => {
                    let request = pb::EnrollTokenRequest {
                        name,
                        ttl,
                        addresses,
                        peers,
                    };
                    let reply = admin.create_enroll_token(request).await;
                    out.token(&reply.map_err(status)?.into_inner());
                }
                NodeAction::Delete { name } => {
                    let reply = admin.delete_node(pb::ListRequest { name }).await;
                    out.apply(&reply.map_err(status)?.into_inner(), false);
                }
            }
        }
        Command::Capabilities { action } => {
            let mut admin = client(&cli.conn).await?;
            let reply = admin.clear_capability(action.request()).await;
            out.apply(&reply.map_err(status)?.into_inner(), false);
        }
        Command::Reports { action } => {
            // The report is JSON whatever -o says: RFC 8460 defines no other form.
            let json = reports::run(&cli.conn, action).await?;
            let _ = std::io::Write::write_all(&mut std::io::stdout(), json.as_bytes());
        }
    }
    Ok(())
}
