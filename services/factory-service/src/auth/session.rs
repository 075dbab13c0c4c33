//! Sign-in, refresh and sign-out: the session rules of CONTRACT 3.1, free of HTTP.
//!
//! A login starts a refresh-token family bound to the device. Each refresh exchanges the
//! presented token for a new one; presenting an exchanged token again means it was copied, so
//! the whole family is revoked (the thief's and the owner's newest token alike) and audited.
//! A session ends [`RefreshLifetime::session`] after its login, however often it is refreshed.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use sqlx::PgConnection;
use uuid::Uuid;

use super::extract::ClientInfo;
use super::{password, repo, tokens};
use crate::audit::{Actor, NewEvent};
use crate::error::FactoryError;
use crate::ratelimit::{Buckets, Decision, network_key};
use crate::state::AppState;
use crate::users::{Role, normalize_email};

/// What a successful login or refresh hands out. Its `Debug` shows no token.
pub struct Session {
    /// The JWT access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// The new opaque refresh token (cookie).
    pub refresh_token: String,
    /// The CSRF token bound to the family (cookie and header).
    pub csrf_token: String,
    /// Both cookies' lifetime in seconds: the refresh token's, from its issue.
    pub cookie_max_age: u64,
}

/// How long refresh tokens, and the sessions they continue, live.
#[derive(Debug, Clone, Copy)]
pub struct RefreshLifetime {
    /// One token's (`REFRESH_TOKEN_TTL_SEC`): each login or refresh issues a token good for this
    /// long, so a session used at least this often slides on.
    pub token: Duration,
    /// The session's (`REFRESH_SESSION_MAX_SEC`), from its login: no refresh goes past it, so a
    /// stolen session that is kept alive still ends, and the user signs in again.
    pub session: Duration,
}

impl RefreshLifetime {
    /// When a session that started (logged in) at `started` ends.
    pub fn session_end(&self, started: DateTime<Utc>) -> DateTime<Utc> {
        after(started, self.session)
    }

    /// The expiry of a token issued at `now` in a session that started at `started`: one
    /// token's lifetime, cut at the session's end.
    pub fn token_expiry(&self, started: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        after(now, self.token).min(self.session_end(started))
    }
}

/// `at` plus `lifetime`, saturating (the configured lifetimes are at most ten years).
fn after(at: DateTime<Utc>, lifetime: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(lifetime)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The refresh cookie, CSRF header and cookie, and device id sent with refresh and logout.
/// Its `Debug` shows which parts came, never their values.
#[derive(Default)]
pub struct Presented {
    /// `__Host-vt_refresh`.
    pub refresh_token: Option<String>,
    /// `X-CSRF-Token`.
    pub csrf_header: Option<String>,
    /// `__Host-vt_csrf`.
    pub csrf_cookie: Option<String>,
    /// `X-Device-ID`.
    pub device_id: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("csrf_header", &self.csrf_header.is_some())
            .field("csrf_cookie", &self.csrf_cookie.is_some())
            .field("device_id", &self.device_id)
            .finish()
    }
}

/// Checks an `X-Device-ID`: 16 to 128 visible ASCII characters.
pub fn check_device_id(device_id: Option<&str>) -> Result<&str, FactoryError> {
    match device_id {
        Some(d) if (16..=128).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(d)
        }
        _ => Err(FactoryError::BadRequest {
            code: "invalid_device_id",
            detail: "Send X-Device-ID: 16 to 128 visible ASCII characters.".to_owned(),
        }),
    }
}

fn invalid_credentials() -> FactoryError {
    FactoryError::unauthorized("invalid_credentials", "The email or password is wrong.")
}

fn invalid_refresh() -> FactoryError {
    FactoryError::unauthorized(
        "invalid_refresh_token",
        "The refresh token is missing, expired or revoked.",
    )
}

fn token_reused() -> FactoryError {
    FactoryError::unauthorized(
        "refresh_token_reused",
        "This refresh token was already used; the session has been revoked.",
    )
}

/// A login attempt that took its place in the login limits ([`begin_login`]). Dropped before
/// its password was checked (no turn at the check came, the client left while it waited, the
/// user's look-up failed), its place is given back; after, only a success gives it back
/// ([`LoginAttempt::succeeded`]): only failed attempts count, and a checked one is never
/// given back by a failure that follows the check.
pub struct LoginAttempt {
    by_ip: std::sync::Arc<Buckets>,
    by_email: std::sync::Arc<Buckets>,
    ip_key: String,
    /// The address as given, normalized, cut to 254 characters: the email bucket's key.
    email: String,
    /// The address normalized, when it is one an account could have.
    normalized: Option<String>,
    /// Its password was checked: its place is given back only by [`LoginAttempt::succeeded`].
    checked: bool,
    /// The account the address names, once [`LoginAttempt::look_up`] ran.
    user: Option<repo::UserRow>,
}

impl LoginAttempt {
    /// Looks up the account the address names. Before the attempt waits for its turn at the
    /// password check, so that the turn (one of one per core) is not held through a database
    /// round trip.
    pub async fn look_up(&mut self, state: &AppState) -> Result<(), FactoryError> {
        self.user = match &self.normalized {
            Some(email) => {
                let mut conn = state.pool.acquire().await?;
                repo::user_by_email(&mut conn, email).await?
            }
            None => None,
        };
        Ok(())
    }

    /// Its password has been checked.
    fn checked(&mut self) {
        self.checked = true;
    }

    /// It failed: its place stays taken.
    fn failed(&mut self) {
        self.checked = true;
        metrics::counter!("auth_logins_total", "result" => "invalid_credentials").increment(1);
    }

    /// It succeeded (committed): its place is given back.
    fn succeeded(mut self) {
        self.refund();
        self.checked = true;
        metrics::counter!("auth_logins_total", "result" => "success").increment(1);
    }

    fn refund(&self) {
        self.by_ip.refund(&self.ip_key);
        self.by_email.refund(&self.email);
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if !self.checked {
            self.refund();
        }
    }
}

/// Takes a login attempt for `email` from the client's and the email's limits: 429 when either
/// is spent.
pub fn begin_login(
    state: &AppState,
    email: &str,
    client: &ClientInfo,
) -> Result<LoginAttempt, FactoryError> {
    // Unparseable emails still go through the dummy verification: same answer, same time.
    // They match no account (every stored address passed `normalize_email`), so they are not
    // looked up: PostgreSQL would refuse some of them (a NUL) with an error instead of no row.
    let normalized = normalize_email(email).ok();
    let email: String = normalized
        .clone()
        .unwrap_or_else(|| email.trim().to_lowercase())
        .chars()
        .take(254)
        .collect();
    // An IPv6 client by its /64, which one subscriber can rotate through.
    let ip_key = client
        .ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .map(network_key)
        .unwrap_or_default();
    if let Err(refusal) =
        take_login_attempt(&state.login_by_ip, &state.login_by_email, &ip_key, &email)
    {
        metrics::counter!("auth_logins_total", "result" => "rate_limited").increment(1);
        return Err(FactoryError::RateLimited {
            retry_after: refusal.retry_after_secs,
        });
    }
    Ok(LoginAttempt {
        by_ip: state.login_by_ip.clone(),
        by_email: state.login_by_email.clone(),
        ip_key,
        email,
        normalized,
        checked: false,
        user: None,
    })
}

/// Decides `attempt` (looked up: [`LoginAttempt::look_up`]) with its turn at the password
/// check, from `device_id`: a session, or 401 (counted in the limits). A success gives its
/// place in the limits back, so signing in correctly again and again never locks an account
/// out.
pub async fn login(
    state: &AppState,
    mut attempt: LoginAttempt,
    turn: password::Turn,
    password_given: SecretString,
    device_id: &str,
    client: &ClientInfo,
) -> Result<Session, FactoryError> {
    let user = attempt.user.take();
    // What a failed attempt records: the account's own address when one matched, and never
    // text that matched none. That may be anything typed into the field (a password, say), and
    // the audit chain keeps it for good; anyone could write into the log with it too.
    let claimed = match &user {
        Some(u) if u.disabled_at.is_some() => (Some((u.id, u.email.clone())), "user_disabled"),
        Some(u) => (Some((u.id, u.email.clone())), "wrong_password"),
        None => (None, "unknown_email"),
    };
    let active = user.filter(|u| u.disabled_at.is_none());
    let hash = active
        .as_ref()
        .map_or_else(|| state.dummy_hash.to_string(), |u| u.password_hash.clone());
    let matches = password::verify(turn, password_given, hash).await?;
    attempt.checked();
    let user = match active {
        Some(user) if matches => user,
        _ => {
            attempt.failed();
            let mut tx = state.pool.begin().await?;
            let (account, reason) = claimed;
            let (id, email) = account.unzip();
            let mut event = NewEvent::new("auth.login_failed", Actor::Anonymous { email })
                .client(client.ip.clone(), client.user_agent.clone())
                .details(serde_json::json!({ "reason": reason }));
            if let Some(id) = id {
                event = event.target("user", id);
            }
            state.audit.append(&mut tx, event).await?;
            tx.commit().await?;
            return Err(invalid_credentials());
        }
    };
    let role: Role = user
        .role
        .parse()
        .map_err(|e: String| FactoryError::Internal(format!("user {}: {e}", user.id)))?;

    let family_id = Uuid::new_v4();
    let refresh_token = tokens::new_refresh_token();
    let now = Utc::now();
    let expires_at = state.refresh.token_expiry(now, now);
    let mut tx = state.pool.begin().await?;
    // The account as verified above must still be the account now, and stay so until this
    // commits: an operator's `user set-password`, `end-sessions` or `disable` running meanwhile
    // (they hold the row) would otherwise miss the session this inserts.
    if !repo::lock_unchanged_user(&mut tx, user.id, &user.password_hash).await? {
        attempt.failed();
        return Err(invalid_credentials());
    }
    repo::insert_family(&mut tx, family_id, user.id, device_id, now).await?;
    repo::insert_token(
        &mut tx,
        family_id,
        &tokens::sha256(&refresh_token),
        expires_at,
    )
    .await?;
    let event = NewEvent::new(
        "auth.login",
        Actor::User {
            id: user.id,
            email: user.email.clone(),
        },
    )
    .target("user", user.id)
    .client(client.ip.clone(), client.user_agent.clone());
    state.audit.append(&mut tx, event).await?;
    tx.commit().await?;
    // Only failed attempts count against the login limits: a client that signs in correctly
    // (a script or test suite logging in again and again) never locks the account out.
    attempt.succeeded();
    session(
        state,
        user.id,
        &user.email,
        role,
        family_id,
        refresh_token,
        (now, expires_at),
    )
}

/// Takes one login attempt from the address's budget, then from the email's; the refusing
/// bucket's decision when either is spent. The email's budget is only touched once the address
/// may try: a client over its own limit must not spend (and so lock out) the accounts it names.
fn take_login_attempt(
    by_ip: &Buckets,
    by_email: &Buckets,
    ip_key: &str,
    email: &str,
) -> Result<(), Decision> {
    for (buckets, key) in [(by_ip, ip_key), (by_email, email)] {
        let decision = buckets.check(key);
        if !decision.allowed {
            return Err(decision);
        }
    }
    Ok(())
}

/// Exchanges a refresh token for a new session (both cookies rotated).
pub async fn refresh(
    state: &AppState,
    presented: Presented,
    client: &ClientInfo,
) -> Result<Session, FactoryError> {
    let token = presented
        .refresh_token
        .as_deref()
        .ok_or_else(invalid_refresh)?;
    let csrf = double_submitted(&presented)?;
    // Not validated here: any id but the login's (missing or malformed included) is another
    // device, and revokes the family below.
    let device_id = presented.device_id.as_deref().unwrap_or_default();

    let mut tx = state.pool.begin().await?;
    let found = repo::presented_token_for_update(&mut tx, &tokens::sha256(token))
        .await?
        .ok_or_else(invalid_refresh)?;
    if !state.csrf.verify(found.family_id, csrf) {
        return Err(FactoryError::CsrfFailed);
    }
    if found.family_revoked || found.user_disabled {
        // A rotated token presented again stays a reuse, however often it is replayed.
        if found.rotated && !found.user_disabled {
            return Err(token_reused());
        }
        return Err(invalid_refresh());
    }
    if found.rotated {
        revoke_and_audit(
            state,
            &mut tx,
            &found,
            "reuse",
            "auth.refresh_reuse_detected",
            client,
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("auth_refreshes_total", "result" => "reused").increment(1);
        return Err(token_reused());
    }
    if found.device_id != device_id {
        revoke_and_audit(
            state,
            &mut tx,
            &found,
            "device_mismatch",
            "auth.refresh_device_mismatch",
            client,
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("auth_refreshes_total", "result" => "device_mismatch").increment(1);
        return Err(FactoryError::unauthorized(
            "device_mismatch",
            "The refresh token belongs to another device; the session has been revoked.",
        ));
    }
    let now = Utc::now();
    if found.expired || state.refresh.session_end(found.session_started_at) <= now {
        return Err(invalid_refresh());
    }
    let role: Role = found
        .role
        .parse()
        .map_err(|e: String| FactoryError::Internal(format!("user {}: {e}", found.user_id)))?;
    // The row is locked, so this cannot lose a race; the check keeps it honest if that changes.
    if !repo::mark_rotated(&mut tx, found.token_id).await? {
        return Err(invalid_refresh());
    }
    let refresh_token = tokens::new_refresh_token();
    let expires_at = state.refresh.token_expiry(found.session_started_at, now);
    repo::insert_token(
        &mut tx,
        found.family_id,
        &tokens::sha256(&refresh_token),
        expires_at,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("auth_refreshes_total", "result" => "rotated").increment(1);
    session(
        state,
        found.user_id,
        &found.email,
        role,
        found.family_id,
        refresh_token,
        (now, expires_at),
    )
}

/// Signs out: revokes the family of the presented refresh token.
pub async fn logout(
    state: &AppState,
    presented: Presented,
    client: &ClientInfo,
) -> Result<(), FactoryError> {
    let token = presented
        .refresh_token
        .as_deref()
        .ok_or_else(invalid_refresh)?;
    let csrf = double_submitted(&presented)?;
    let mut tx = state.pool.begin().await?;
    let found = repo::presented_token_for_update(&mut tx, &tokens::sha256(token))
        .await?
        .ok_or_else(invalid_refresh)?;
    if !state.csrf.verify(found.family_id, csrf) {
        return Err(FactoryError::CsrfFailed);
    }
    if !found.family_revoked {
        // A rotated token is a stolen copy (or a lost refresh answer, as for refresh): the
        // session ends all the same, but the log says what happened rather than a sign-out.
        let (reason, action) = if found.rotated {
            ("reuse", "auth.refresh_reuse_detected")
        } else {
            ("logout", "auth.logout")
        };
        revoke_and_audit(state, &mut tx, &found, reason, action, client).await?;
    }
    tx.commit().await?;
    // Counted once committed, as the audit event is.
    if !found.family_revoked && found.rotated {
        metrics::counter!("auth_refreshes_total", "result" => "reused").increment(1);
    }
    Ok(())
}

/// Revokes the presented token's family for `reason` and appends the audit event `action`,
/// on `tx`.
async fn revoke_and_audit(
    state: &AppState,
    tx: &mut PgConnection,
    found: &repo::PresentedToken,
    reason: &str,
    action: &'static str,
    client: &ClientInfo,
) -> Result<(), FactoryError> {
    repo::revoke_family(tx, found.family_id, reason).await?;
    let actor = Actor::User {
        id: found.user_id,
        email: found.email.clone(),
    };
    let event = NewEvent::new(action, actor)
        .target("refresh_family", found.family_id)
        .client(client.ip.clone(), client.user_agent.clone());
    state.audit.append(tx, event).await?;
    Ok(())
}

/// The CSRF header, when it is present and equal to the cookie.
fn double_submitted(presented: &Presented) -> Result<&str, FactoryError> {
    match (
        presented.csrf_header.as_deref(),
        presented.csrf_cookie.as_deref(),
    ) {
        (Some(h), Some(c)) if tokens::same(h, c) => Ok(h),
        _ => Err(FactoryError::CsrfFailed),
    }
}

fn session(
    state: &AppState,
    user_id: Uuid,
    email: &str,
    role: Role,
    family_id: Uuid,
    refresh_token: String,
    (issued_at, expires_at): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Session, FactoryError> {
    // The access token ends with its session at the latest: when the refresh token issued with
    // it expires (the session's maximum lifetime included).
    let not_after = u64::try_from(expires_at.timestamp()).unwrap_or(0);
    let (access_token, expires_in) = state
        .jwt
        .issue(user_id, family_id, email, role, not_after)
        .map_err(|e| FactoryError::Internal(format!("signing access token: {e}")))?;
    Ok(Session {
        access_token,
        expires_in,
        refresh_token,
        csrf_token: state.csrf.issue(family_id),
        // The cookies live as long as the token (whole seconds, at least one).
        cookie_max_age: u64::try_from((expires_at - issued_at).num_seconds())
            .unwrap_or(0)
            .max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt dropped before its password was checked (refused a turn at the check, its
    /// client gone while it waited, a database error) gives its place in both limits back, as
    /// a success does; one whose password was checked keeps it, whatever fails after. Refused a turn during a flood, a user retrying on `Retry-After` spent
    /// the email's budget and was then locked out for a minute after the flood.
    #[test]
    fn an_attempt_dropped_undecided_gives_its_place_back() {
        let limits = || std::sync::Arc::new(Buckets::new(0.001, 1));
        let (by_ip, by_email) = (limits(), limits());
        let attempt = || LoginAttempt {
            by_ip: by_ip.clone(),
            by_email: by_email.clone(),
            ip_key: "198.51.100.7".to_owned(),
            email: "a@example.com".to_owned(),
            normalized: None,
            checked: false,
            user: None,
        };
        let take = || take_login_attempt(&by_ip, &by_email, "198.51.100.7", "a@example.com");
        for _ in 0..3 {
            assert!(take().is_ok());
            drop(attempt());
        }
        // A success gives it back too.
        assert!(take().is_ok());
        attempt().succeeded();
        // Checked, then a failure (the session's transaction, say): kept.
        assert!(take().is_ok());
        let mut checked = attempt();
        checked.checked();
        drop(checked);
        assert!(take().is_err());
    }

    #[test]
    fn a_token_never_outlives_its_session() {
        let day = Duration::from_secs(86_400);
        let lifetime = RefreshLifetime {
            token: 30 * day,
            session: 90 * day,
        };
        let login = Utc::now();
        let days = |n: i64| TimeDelta::days(n);
        // At login and early on, a token gets its whole lifetime.
        assert_eq!(lifetime.token_expiry(login, login), login + days(30));
        assert_eq!(
            lifetime.token_expiry(login, login + days(10)),
            login + days(40)
        );
        // Later, refreshes slide only up to the session's end.
        assert_eq!(lifetime.session_end(login), login + days(90));
        assert_eq!(
            lifetime.token_expiry(login, login + days(80)),
            login + days(90)
        );
        assert_eq!(
            lifetime.token_expiry(login, login + days(95)),
            login + days(90)
        );
    }

    #[test]
    fn an_address_over_its_limit_does_not_spend_the_emails_it_names() {
        let by_ip = Buckets::new(1.0 / 60.0, 3);
        let by_email = Buckets::new(1.0 / 60.0, 2);
        for i in 0..3 {
            let email = format!("own{i}@example.com");
            assert!(take_login_attempt(&by_ip, &by_email, "198.51.100.7", &email).is_ok());
        }
        // The address is spent: whatever it names, the emails' budgets stay whole.
        for i in 0..50 {
            let email = format!("victim{}@example.com", i % 5);
            assert!(take_login_attempt(&by_ip, &by_email, "198.51.100.7", &email).is_err());
        }
        for _ in 0..2 {
            assert!(
                take_login_attempt(&by_ip, &by_email, "203.0.113.1", "victim0@example.com").is_ok()
            );
        }
        // And the email's own limit still holds, from any address.
        let refusal = take_login_attempt(&by_ip, &by_email, "203.0.113.2", "victim0@example.com")
            .unwrap_err();
        assert!(refusal.retry_after_secs >= 1);
    }
}
