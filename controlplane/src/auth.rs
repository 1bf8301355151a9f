//! Who is calling, decided from the request head before the body is read: an unauthenticated
//! or wrong-role request is answered without a byte of its message being parsed
//! (CONFORMANCE G.47). Nodes are their keys (mTLS); admins are bearer tokens or keys.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::counter;
use osgate_core::crypto::sha::sha256;
use osgate_core::pin::SpkiPin;
use tonic::Status;

use crate::config::{Admin, Credential, Role};
use crate::metrics as m;
use crate::state::State;

/// The key of the connection's client certificate, if it presented one.
#[derive(Clone, Copy, Debug)]
pub struct PeerKey(pub Option<SpkiPin>);

/// The authenticated caller, put in the request's extensions for the handlers.
#[derive(Clone, Debug)]
pub enum Caller {
    Admin {
        name: String,
        role: Role,
    },
    /// A registered node.
    Node {
        name: String,
    },
    /// A key enrolling with a one-time token.
    Enrolling {
        key: SpkiPin,
    },
    /// Health checks only.
    Anyone,
    /// The control plane itself (the DANE cache's refreshes).
    ControlPlane,
}

impl Caller {
    /// The name written to the audit log.
    pub fn who(&self) -> String {
        match self {
            Self::Admin { name, role } => format!("{}:{name}", role.as_str()),
            Self::Node { name } => format!("node:{name}"),
            Self::Enrolling { key } => format!("enrolling:{key}"),
            Self::Anyone => "anonymous".into(),
            Self::ControlPlane => "controlplane".into(),
        }
    }
}

/// Which callers a method admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Anyone,
    AnyKey,
    Node,
    Viewer,
    Admin,
}

fn needs(path: &str) -> Option<Needs> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    Some(match service {
        "grpc.health.v1.Health" => Needs::Anyone,
        "osgate.v1.Fleet" if method == "Enroll" => Needs::AnyKey,
        "osgate.v1.Fleet" => Needs::Node,
        "osgate.v1.Admin"
            if method.starts_with("List")
                || method == "GetTlsrptReport"
                || method == "GetCapabilities" =>
        {
            Needs::Viewer
        }
        "osgate.v1.Admin" => Needs::Admin,
        s if s.starts_with("grpc.reflection.") => Needs::Viewer,
        _ => return None,
    })
}

/// The tower layer that authenticates every request.
#[derive(Clone, Debug)]
pub struct Auth {
    pub admins: Arc<Vec<Admin>>,
    pub state: Arc<State>,
}

impl Auth {
    fn admin(&self, head: &http::request::Parts, key: Option<SpkiPin>) -> Option<&Admin> {
        let token = head
            .headers
            .get(osgate_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let hashed = token.map(|t| sha256(t.as_bytes()));
        self.admins.iter().find(|a| match &a.credential {
            Credential::TokenSha256(h) => hashed.as_deref() == Some(h.as_slice()),
            Credential::Key(pin) => key == Some(*pin),
        })
    }

    fn node(&self, key: SpkiPin) -> Option<String> {
        self.state.node_named_by_key(&key.to_string())
    }

    /// The caller, or the status that refuses it.
    fn decide(&self, head: &http::request::Parts) -> Result<Caller, Status> {
        let key = head.extensions.get::<PeerKey>().and_then(|k| k.0);
        let Some(needs) = needs(head.uri.path()) else {
            return Err(Status::permission_denied("no such method for this caller"));
        };
        let admin = || self.admin(head, key);
        match needs {
            Needs::Anyone => Ok(Caller::Anyone),
            Needs::AnyKey => key.map(|key| Caller::Enrolling { key }).ok_or_else(|| {
                Status::unauthenticated(
                    "enrolment needs the node's key as a TLS client certificate",
                )
            }),
            Needs::Node => match key.and_then(|k| self.node(k)) {
                Some(name) => Ok(Caller::Node { name }),
                None => Err(Status::unauthenticated(
                    "this key is not a registered node: register it (osgatectl nodes register) or enrol with a token",
                )),
            },
            Needs::Viewer | Needs::Admin => match admin() {
                None => Err(Status::unauthenticated(
                    "a bearer token or admin key is needed",
                )),
                Some(a) if needs == Needs::Admin && a.role != Role::Admin => {
                    Err(Status::permission_denied(format!(
                        "{} has role viewer; this method needs admin",
                        a.name
                    )))
                }
                Some(a) => Ok(Caller::Admin {
                    name: a.name.clone(),
                    role: a.role,
                }),
            },
        }
    }
}

impl<S> tower_layer::Layer<S> for Auth {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            auth: self.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    auth: Auth,
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (mut head, body) = request.into_parts();
        match self.auth.decide(&head) {
            Ok(caller) => {
                head.extensions.insert(caller);
                Box::pin(self.inner.call(http::Request::from_parts(head, body)))
            }
            Err(status) => {
                counter!(m::REQUESTS_REFUSED, "code" => format!("{:?}", status.code()))
                    .increment(1);
                tracing::info!(
                    path = head.uri.path(),
                    reason = status.message(),
                    "request refused"
                );
                // The body is dropped unread.
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The caller the layer put in the request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a handler without authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_write_needs_admin_and_lists_need_viewer() {
        assert_eq!(needs("/osgate.v1.Admin/ApplyPolicies"), Some(Needs::Admin));
        assert_eq!(needs("/osgate.v1.Admin/ListPolicies"), Some(Needs::Viewer));
        assert_eq!(needs("/osgate.v1.Fleet/Watch"), Some(Needs::Node));
        assert_eq!(needs("/osgate.v1.Fleet/Enroll"), Some(Needs::AnyKey));
        assert_eq!(needs("/grpc.health.v1.Health/Check"), Some(Needs::Anyone));
        assert_eq!(needs("/other.Service/Method"), None);
        assert_eq!(needs("garbage"), None);
    }
}
