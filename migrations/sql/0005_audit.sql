-- The audit log (SPEC.md §5 guarantee 8, "Audit proofs"; docs/adr/0007-merkle-audit-log.md).

-- Which chain version each event's hash uses (domain::chain): 1 for every event written
-- before this migration (the project's own canonical form, ADR 0006), 2 for every event
-- written since (SHA-256 over RFC 8785 canonical JSON). The column is added with the
-- default 1, so existing rows say 1; the default then becomes 2, the version the
-- writers of this release compute, so the append statements need not name it. All the
-- processes of a deployment run one release (migrations run at start-up).
ALTER TABLE events ADD COLUMN hash_version smallint NOT NULL DEFAULT 1
    CONSTRAINT events_hash_version CHECK (hash_version IN (1, 2));
ALTER TABLE events ALTER COLUMN hash_version SET DEFAULT 2;

-- The Merkle tree over every event in position order (leaf i = position i + 1), kept
-- incrementally by the one signer (an advisory lock): `size` leaves are in the tree.
-- Moved only together with the nodes it covers, in one transaction, and only from the
-- size the signer read (a compare-and-set), so a second signer can never append twice.
CREATE TABLE audit_tree (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    size        bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_tree DEFAULT VALUES;

-- Every complete (perfect) subtree of the log: (level, idx) covers the leaves
-- idx·2^level .. (idx+1)·2^level - 1; level 0 holds the leaf hashes
-- SHA-256(0x00 || events.hash). Written once, never changed: proofs and roots of any
-- size are computed from them.
CREATE TABLE audit_tree_nodes (
    level  smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx    bigint   NOT NULL CHECK (idx >= 0),
    hash   bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Signed tree heads, exactly as published: the JSON {tree_size, root_hash, timestamp,
-- key_id, signature} (root_hash and key_id lower-case hex, timestamp RFC 3339 UTC as
-- signed, signature base64). `published`: already on the JetStream stream AUDIT
-- (subject audit.tree_head); the signer publishes the others in order.
CREATE TABLE tree_heads (
    tree_size   bigint      PRIMARY KEY CHECK (tree_size >= 0),
    root_hash   text        NOT NULL CHECK (root_hash ~ '^[0-9a-f]{64}$'),
    "timestamp" text        NOT NULL CHECK ("timestamp" ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$'),
    key_id      text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{64}$'),
    signature   text        NOT NULL,
    published   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tree_heads_unpublished ON tree_heads (tree_size) WHERE NOT published;
