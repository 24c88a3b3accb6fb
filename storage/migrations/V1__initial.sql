-- rcs-relay on PostgreSQL: the storage contract's tables (storage/src/contract.rs).
-- Addresses never appear: recipients are rids (keyed BLAKE3 hashes, 32 bytes), credentials
-- are salted hashes, KeyPackages and GroupInfo are stored sealed (relay_core::atrest), push
-- handles are opaque (sealed by the push proxy), outbox records are sealed by the gateway.

-- Devices.
CREATE TABLE devices (
    rid             bytea   NOT NULL CHECK (length(rid) = 32),
    device          integer NOT NULL,
    status          smallint NOT NULL,
    created_day     integer NOT NULL,
    credential_salt bytea   NOT NULL,
    credential_hash bytea   NOT NULL,
    lookup          bytea   NOT NULL UNIQUE CHECK (length(lookup) = 16),
    -- Bytes of the envelopes queued for the device (its quota; gaps count nothing). A send
    -- locks the recipient devices' rows before it takes its seq, so each device's seqs
    -- become visible in order.
    queued          bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (rid, device)
);
-- Every rid that ever registered (device ids are never reused).
CREATE TABLE device_counters (
    rid  bytea PRIMARY KEY CHECK (length(rid) = 32),
    next integer NOT NULL
);
CREATE TABLE provisioning_nonces (
    nonce         bytea  PRIMARY KEY CHECK (length(nonce) = 16),
    expires_at_ms bigint NOT NULL
);

-- Mailboxes: the message bytes once per send, one row per recipient device.
CREATE TABLE blobs (
    seq            bigint  PRIMARY KEY,
    rand           bytea   NOT NULL CHECK (length(rand) = 8),
    flags          integer NOT NULL,
    received_at_ms bigint  NOT NULL,
    expires_at_ms  bigint  NOT NULL,
    payload        bytea   NOT NULL
);
CREATE INDEX blobs_expiry ON blobs (expires_at_ms);
CREATE TABLE mailbox (
    rid    bytea   NOT NULL,
    device integer NOT NULL,
    seq    bigint  NOT NULL REFERENCES blobs (seq) ON DELETE CASCADE,
    size   integer NOT NULL,
    urgent boolean NOT NULL,
    PRIMARY KEY (rid, device, seq)
);
CREATE INDEX mailbox_blob ON mailbox (seq);
CREATE TABLE gaps (
    rid            bytea   NOT NULL,
    device         integer NOT NULL,
    seq            bigint  NOT NULL,
    dropped        bigint  NOT NULL,
    received_at_ms bigint  NOT NULL,
    expires_at_ms  bigint  NOT NULL,
    PRIMARY KEY (rid, device, seq)
);
CREATE TABLE idempotency (
    rid           bytea   NOT NULL,
    device        integer NOT NULL,
    cmid          bytea   NOT NULL CHECK (length(cmid) = 16),
    server_id     bytea   NOT NULL CHECK (length(server_id) = 16),
    digest        bytea   NOT NULL CHECK (length(digest) = 32),
    accepted_epoch bigint,
    expires_at_ms bigint  NOT NULL,
    PRIMARY KEY (rid, device, cmid)
);
CREATE INDEX idempotency_expiry ON idempotency (expires_at_ms);
CREATE INDEX gaps_expiry ON gaps (expires_at_ms);
CREATE SEQUENCE send_seq;

-- KeyPackages (claimed with FOR UPDATE SKIP LOCKED) and their Welcome routes.
CREATE TABLE key_packages (
    kp_ref       bytea   PRIMARY KEY,
    rid          bytea   NOT NULL,
    device       integer NOT NULL,
    last_resort  boolean NOT NULL,
    not_after_ms bigint  NOT NULL,
    sealed       bytea   NOT NULL
);
CREATE INDEX key_packages_device ON key_packages (rid, device, last_resort);
-- Welcome routing: which device uploaded a KeyPackage, kept after the claim until it expires.
CREATE TABLE key_package_routes (
    kp_ref       bytea   PRIMARY KEY,
    rid          bytea   NOT NULL,
    device       integer NOT NULL,
    not_after_ms bigint  NOT NULL
);
CREATE INDEX key_package_routes_rid ON key_package_routes (rid);

-- Groups: the epoch (commit ordering) and the latest GroupInfo, sealed.
CREATE TABLE groups (
    group_key  bytea PRIMARY KEY CHECK (length(group_key) = 32),
    epoch      bigint,
    group_info bytea
);

CREATE TABLE push_handles (
    rid    bytea   NOT NULL,
    device integer NOT NULL,
    handle text    NOT NULL,
    PRIMARY KEY (rid, device)
);

-- The interconnect outbox: one row per entry, leased by one node at a time (a node that
-- dies leaves its lease to expire).
CREATE TABLE outbox (
    peer            text    NOT NULL,
    seq             bigint  NOT NULL,
    envelope_id     bytea   NOT NULL CHECK (length(envelope_id) = 16),
    created_at_ms   bigint  NOT NULL,
    attempts        integer NOT NULL,
    next_attempt_ms bigint  NOT NULL,
    record          bytea   NOT NULL,
    lease_until_ms  bigint  NOT NULL DEFAULT 0,
    leased_by       text,
    PRIMARY KEY (peer, seq)
);

-- The audit log: a hash chain and RFC 6962 Merkle frontier (one head row), checkpoints.
CREATE TABLE audit (
    seq    bigint PRIMARY KEY,
    at_ms  bigint NOT NULL,
    kind   text   NOT NULL,
    detail text   NOT NULL,
    hash   bytea  NOT NULL CHECK (length(hash) = 32)
);
CREATE TABLE audit_head (
    id       smallint PRIMARY KEY CHECK (id = 1),
    seq      bigint   NOT NULL,
    hash     bytea    NOT NULL,
    frontier bytea    NOT NULL
);
CREATE TABLE audit_checkpoints (
    size bigint PRIMARY KEY,
    note text   NOT NULL
);
CREATE TABLE audit_base (
    id       smallint PRIMARY KEY CHECK (id = 1),
    size     bigint   NOT NULL,
    chain    bytea    NOT NULL,
    frontier bytea    NOT NULL
);

-- Operator controls and a K_rid rotation's marks.
CREATE TABLE switches_off (
    name     text   PRIMARY KEY,
    since_ms bigint NOT NULL
);
CREATE TABLE suspended (
    rid      bytea  PRIMARY KEY CHECK (length(rid) = 32),
    since_ms bigint NOT NULL
);
CREATE TABLE rekey_marks (
    rid      bytea  PRIMARY KEY CHECK (length(rid) = 32),
    since_ms bigint NOT NULL
);

-- Live receivers on every node (push decisions across nodes), leased: a node refreshes its
-- rows while it runs, and the rows of a node that died expire.
CREATE TABLE receivers (
    rid      bytea   NOT NULL CHECK (length(rid) = 32),
    device   integer NOT NULL,
    node     text    NOT NULL,
    until_ms bigint  NOT NULL,
    PRIMARY KEY (rid, device, node)
);

-- Rate limits shared by the nodes (GCRA: the theoretical arrival time per key). Unlogged:
-- losing them in a crash only forgets recent requests.
CREATE UNLOGGED TABLE rate_limits (
    key    bytea  PRIMARY KEY,
    tat_ms bigint NOT NULL
);

-- What every node on the database must agree on (e.g. a probe of the rid key per version).
CREATE TABLE cluster (
    name  text PRIMARY KEY,
    value text NOT NULL
);
