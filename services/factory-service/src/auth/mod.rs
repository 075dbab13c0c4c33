//! Authentication and authorization: passwords, access tokens, rotating device-bound refresh
//! tokens, CSRF, and the role policies handlers demand.

pub mod cookies;
pub mod ended;
pub mod extract;
pub mod jwt;
pub mod password;
pub mod repo;
pub mod routes;
pub mod session;
pub mod tokens;

pub use ended::EndedSessions;
pub use extract::{
    AdminOnly, AnyRole, Authorized, CatalogWriter, Claimed, ClientInfo, Identity, Policy,
    Principal, confirm_session, identify,
};
pub use jwt::JwtKeys;
pub use session::RefreshLifetime;
pub use tokens::CsrfKey;
