-- Core schema shared by both services. The factory service owns it; the scan service only reads
-- tags and api_keys. Applied by `factory-service migrate`.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    CHECK (email = lower(email) AND position('@' IN email) > 1)
);
CREATE UNIQUE INDEX users_email_key ON users (email);

-- A refresh-token family starts at login, bound to the device; every rotation adds a token.
CREATE TABLE refresh_families (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id      text NOT NULL CHECK (length(device_id) BETWEEN 16 AND 128),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX refresh_families_user_idx ON refresh_families (user_id);

CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY,
    family_id   uuid NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix                text NOT NULL UNIQUE,
    key_hash              bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    created_by            uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    revoked_at            timestamptz
);

CREATE TABLE products (
    id         uuid PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    sku        text NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE batches (
    id         uuid PRIMARY KEY,
    product_id uuid NOT NULL REFERENCES products (id),
    quantity   integer NOT NULL CHECK (quantity BETWEEN 1 AND 100000),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_product_idx ON batches (product_id);

CREATE TABLE tags (
    tag_id           text PRIMARY KEY CHECK (tag_id ~ '^[A-Za-z0-9_-]{16,64}$'),
    batch_id         uuid NOT NULL REFERENCES batches (id),
    product_id       uuid NOT NULL REFERENCES products (id),
    status           text NOT NULL DEFAULT 'authentic' CHECK (status IN ('authentic', 'revoked')),
    revoked_at       timestamptz,
    revoked_reason   text,
    scan_count       bigint NOT NULL DEFAULT 0 CHECK (scan_count >= 0),
    first_scanned_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);
CREATE INDEX tags_batch_idx ON tags (batch_id);

-- One row per scan event, keyed by the event id so a redelivered event is applied once.
CREATE TABLE scans (
    event_id       uuid PRIMARY KEY,
    tag_id         text NOT NULL,
    result         text NOT NULL CHECK (result IN ('authentic', 'revoked', 'unknown')),
    scanned_at     timestamptz NOT NULL,
    client_ip_hash text NOT NULL,
    api_key_id     uuid,
    user_agent     text,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scans_tag_idx ON scans (tag_id, scanned_at);

-- Audit log, version 1 (before the hash chain). The audit migration adds the chain columns.
CREATE TABLE audit_events (
    seq         bigint PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL,
    actor_id    uuid,
    actor_email text,
    action      text NOT NULL,
    target_type text,
    target_id   text,
    client_ip   text,
    user_agent  text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE audit_checkpoints (
    seq        bigint PRIMARY KEY,
    hash       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text,
    signature  bytea
);
