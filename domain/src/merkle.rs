//! The audit log: a Merkle tree over every event in position order, hashed as RFC 9162
//! §2.1 (Certificate Transparency v2), its signed tree heads, and the proofs an auditor
//! checks against them.
//!
//! - Leaf `i` is the event at position `i + 1`; its leaf hash is `SHA-256(0x00 ||
//!   event hash)`, an inner node `SHA-256(0x01 || left || right)`, the empty tree's root
//!   `SHA-256("")`. The tree of `n` leaves splits at `k`, the largest power of two below
//!   `n` (§2.1.1).
//! - **Nodes.** [`NodeId`] `(level, index)` is the perfect subtree over leaves
//!   `index·2^level .. (index+1)·2^level`; once complete it never changes, so the store
//!   keeps them and every proof or root of any size is computed from them
//!   ([`subtree_hash`]).
//! - **Appending.** [`Frontier`] holds the perfect subtrees along the right edge (at
//!   most 64): appending a leaf completes ≤ log n nodes and the root is a fold of the
//!   frontier, so keeping the tree costs O(log n) per event, never a recomputation.
//! - **Proofs.** [`inclusion_proof`] / [`verify_inclusion`] (§2.1.3) and
//!   [`consistency_proof`] / [`verify_consistency`] (§2.1.4), the verifiers exactly as
//!   the RFC's algorithms, so an auditor's own implementation agrees.
//! - **Tree heads.** A signed tree head is `{tree_size, root_hash, timestamp, key_id,
//!   signature}`: Ed25519 over `JCS({tree_size, root_hash, timestamp})`
//!   ([`head_message`]), `key_id` the hex SHA-256 of the raw public key.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The root over already-hashed leaves (`MTH`, recursively; for tests and small trees).
pub fn root_of_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(
                &root_of_leaf_hashes(&leaves[..k]),
                &root_of_leaf_hashes(&leaves[k..]),
            )
        }
    }
}

/// A perfect subtree: leaves `index << level .. (index + 1) << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// 0 for a leaf.
    pub level: u8,
    /// Position among the nodes of its level.
    pub index: u64,
}

/// Why a tree, a proof or a head is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A proof was asked for a leaf or size the tree does not have.
    #[error("{0}")]
    OutOfRange(String),
    /// A node the computation needs is not stored.
    #[error("node (level {}, index {}) is missing", .0.level, .0.index)]
    MissingNode(NodeId),
    /// A proof did not verify.
    #[error("the proof does not verify: {0}")]
    Invalid(&'static str),
    /// A field is not in the expected format (hex, base64, sizes).
    #[error("{0}")]
    Format(String),
}

/// The hash of the subtree over leaves `start .. start + size` (`start` a multiple of
/// the largest power of two ≤ `size`, as every subtree of §2.1 is), from the stored
/// perfect subtrees.
pub fn subtree_hash(
    start: u64,
    size: u64,
    get: &mut impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    if size.is_power_of_two() {
        let level = size.trailing_zeros() as u8;
        let id = NodeId {
            level,
            index: start >> level,
        };
        return get(id).ok_or(MerkleError::MissingNode(id));
    }
    let k = split(size);
    let left = subtree_hash(start, k, get)?;
    let right = subtree_hash(start + k, size - k, get)?;
    Ok(node_hash(&left, &right))
}

/// The nodes [`subtree_hash`], [`inclusion_proof`] or [`consistency_proof`] will ask
/// for (they depend on the sizes only), so that a store can fetch them in one query.
pub fn nodes_needed(run: impl FnOnce(&mut dyn FnMut(NodeId) -> Option<Hash>)) -> Vec<NodeId> {
    let mut ids = Vec::new();
    let mut record = |id: NodeId| {
        ids.push(id);
        Some([0u8; 32])
    };
    run(&mut record);
    ids.sort();
    ids.dedup();
    ids
}

/// The audit path of leaf `index` in the tree of `size` leaves (§2.1.3.1), leaf first.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    get: &mut impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::OutOfRange(format!(
            "leaf index {index} is not in a tree of {size} leaves"
        )));
    }
    fn path(
        m: u64,
        start: u64,
        n: u64,
        get: &mut impl FnMut(NodeId) -> Option<Hash>,
        out: &mut Vec<Hash>,
    ) -> Result<(), MerkleError> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(m, start, k, get, out)?;
            out.push(subtree_hash(start + k, n - k, get)?);
        } else {
            path(m - k, start + k, n - k, get, out)?;
            out.push(subtree_hash(start, k, get)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    path(index, 0, size, get, &mut out)?;
    Ok(out)
}

/// The consistency proof from the tree of `first` leaves to the tree of `second`
/// (§2.1.4.1); empty when `first == second`. `first` must be at least 1.
pub fn consistency_proof(
    first: u64,
    second: u64,
    get: &mut impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, MerkleError> {
    if first == 0 || first > second {
        return Err(MerkleError::OutOfRange(format!(
            "no consistency proof from {first} to {second} leaves (need 1 ≤ first ≤ second)"
        )));
    }
    fn subproof(
        m: u64,
        start: u64,
        n: u64,
        whole: bool,
        get: &mut impl FnMut(NodeId) -> Option<Hash>,
        out: &mut Vec<Hash>,
    ) -> Result<(), MerkleError> {
        if m == n {
            if !whole {
                out.push(subtree_hash(start, m, get)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            subproof(m, start, k, whole, get, out)?;
            out.push(subtree_hash(start + k, n - k, get)?);
        } else {
            subproof(m - k, start + k, n - k, false, get, out)?;
            out.push(subtree_hash(start, k, get)?);
        }
        Ok(())
    }
    let mut out = Vec::new();
    if first < second {
        subproof(first, 0, second, true, get, &mut out)?;
    }
    Ok(out)
}

/// RFC 9162 §2.1.3.2: whether `path` proves the leaf hash `leaf` at `index` in the tree
/// of `size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::Invalid("the leaf index is not below the tree size"));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(MerkleError::Invalid("the audit path is too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::Invalid("the audit path is too short"));
    }
    if r != *root {
        return Err(MerkleError::Invalid("the computed root differs"));
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: whether `proof` shows that the tree of `second` leaves with root
/// `second_root` extends the tree of `first` leaves with root `first_root`. Sizes
/// equal: the proof is empty and the roots are equal. `first = 0`: the empty tree is a
/// prefix of every tree (an empty proof).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if first > second {
        return Err(MerkleError::Invalid("the first tree is larger than the second"));
    }
    if first == 0 {
        return if proof.is_empty() && *first_root == empty_root() {
            Ok(())
        } else {
            Err(MerkleError::Invalid("a proof from the empty tree is empty"))
        };
    }
    if first == second {
        return if !proof.is_empty() {
            Err(MerkleError::Invalid("a proof between equal sizes is empty"))
        } else if first_root != second_root {
            Err(MerkleError::Invalid("equal sizes with different roots"))
        } else {
            Ok(())
        };
    }
    if proof.is_empty() {
        return Err(MerkleError::Invalid("the proof is empty"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(MerkleError::Invalid("the proof is too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::Invalid("the proof is too short"));
    }
    if fr != *first_root {
        return Err(MerkleError::Invalid("it does not lead to the first root"));
    }
    if sr != *second_root {
        return Err(MerkleError::Invalid("it does not lead to the second root"));
    }
    Ok(())
}

/// The right edge of a tree: its perfect subtrees, largest first, one per set bit of
/// the size. Enough to append a leaf and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree's.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids of the frontier nodes of a tree of `size` leaves, largest first.
    pub fn ids(size: u64) -> Vec<NodeId> {
        (0..64u8)
            .rev()
            .filter(|level| size >> level & 1 == 1)
            .map(|level| NodeId {
                level,
                index: (size >> level) - 1,
            })
            .collect()
    }

    /// The frontier of a tree of `size` leaves from its nodes ([`Frontier::ids`] order).
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Result<Self, MerkleError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(MerkleError::Format(format!(
                "a tree of {size} leaves has {} frontier nodes, not {}",
                size.count_ones(),
                nodes.len()
            )));
        }
        Ok(Self { size, nodes })
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (its leaf hash); `completed` is told of every node this finishes,
    /// the leaf itself first (level 0), then up the levels.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, &Hash)) {
        let index = self.size;
        completed(NodeId { level: 0, index }, &leaf);
        let mut current = leaf;
        let mut level = 0u8;
        while index >> level & 1 == 1 {
            // The frontier's smallest subtree is this one's left sibling.
            let Some(left) = self.nodes.pop() else { break };
            current = node_hash(&left, &current);
            level += 1;
            completed(
                NodeId {
                    level,
                    index: index >> level,
                },
                &current,
            );
        }
        self.nodes.push(current);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Lower-case hex.
pub fn to_hex(h: &[u8]) -> String {
    hex::encode(h)
}

/// A 32-byte hash from hex (either case).
pub fn from_hex(s: &str) -> Result<Hash, MerkleError> {
    let bytes = hex::decode(s).map_err(|e| MerkleError::Format(format!("{s:?} is not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| MerkleError::Format(format!("{s:?} is not 32 bytes of hex")))
}

/// `{leaf_index, tree_size, leaf_hash, audit_path}` (hashes in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The leaf (position − 1).
    pub leaf_index: u64,
    /// The tree it is proved in.
    pub tree_size: u64,
    /// `SHA-256(0x00 || event hash)`.
    pub leaf_hash: String,
    /// Sibling hashes from the leaf up.
    pub audit_path: Vec<String>,
}

impl InclusionProof {
    /// Verifies against `root`.
    pub fn verify(&self, root: &Hash) -> Result<(), MerkleError> {
        let path = self
            .audit_path
            .iter()
            .map(|h| from_hex(h))
            .collect::<Result<Vec<_>, _>>()?;
        verify_inclusion(
            self.leaf_index,
            self.tree_size,
            &from_hex(&self.leaf_hash)?,
            &path,
            root,
        )
    }
}

/// `{first, second, proof}` (hashes in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older tree's size.
    pub first: u64,
    /// The newer tree's size.
    pub second: u64,
    /// RFC 9162 §2.1.4 proof nodes.
    pub proof: Vec<String>,
}

impl ConsistencyProof {
    /// Verifies against both roots.
    pub fn verify(&self, first_root: &Hash, second_root: &Hash) -> Result<(), MerkleError> {
        let proof = self
            .proof
            .iter()
            .map(|h| from_hex(h))
            .collect::<Result<Vec<_>, _>>()?;
        verify_consistency(self.first, self.second, first_root, second_root, &proof)
    }
}

/// A signed tree head, exactly as stored, published and handed to auditors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// Leaves covered.
    pub tree_size: u64,
    /// The root, lower-case hex.
    pub root_hash: String,
    /// When it was signed, RFC 3339 UTC.
    pub timestamp: String,
    /// Lower-case hex SHA-256 of the raw 32-byte Ed25519 public key.
    pub key_id: String,
    /// Base64 (standard, padded) Ed25519 signature over [`head_message`].
    pub signature: String,
}

/// The signed bytes: `JCS({tree_size, root_hash, timestamp})`.
pub fn head_message(tree_size: u64, root_hash: &str, timestamp: &str) -> Vec<u8> {
    crate::jcs::to_vec(&serde_json::json!({
        "tree_size": tree_size,
        "root_hash": root_hash,
        "timestamp": timestamp,
    }))
}

/// The key id of a public key: lower-case hex SHA-256 of its 32 raw bytes.
pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// The public key as `audit public-key` prints it: base64 of the raw 32 bytes.
pub fn public_key_base64(key: &ed25519_dalek::VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// A public key from [`public_key_base64`]'s form.
pub fn public_key_from_base64(s: &str) -> Result<ed25519_dalek::VerifyingKey, MerkleError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| MerkleError::Format(format!("the public key is not base64: {e}")))?;
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| MerkleError::Format("the public key is not 32 bytes".into()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|e| MerkleError::Format(format!("not an Ed25519 public key: {e}")))
}

/// Whether a timestamp is RFC 3339 in UTC (`Z`).
fn is_utc_rfc3339(t: &str) -> bool {
    t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok()
}

impl SignedTreeHead {
    /// Signs the tree of `tree_size` leaves with root `root` at `timestamp` (RFC 3339
    /// UTC).
    pub fn sign(tree_size: u64, root: &Hash, timestamp: String, key: &ed25519_dalek::SigningKey) -> Self {
        let root_hash = to_hex(root);
        let signature = key.sign(&head_message(tree_size, &root_hash, &timestamp));
        SignedTreeHead {
            tree_size,
            root_hash,
            timestamp,
            key_id: key_id(&key.verifying_key()),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        }
    }

    /// The root as bytes.
    pub fn root(&self) -> Result<Hash, MerkleError> {
        from_hex(&self.root_hash)
    }

    /// Checks the format and the signature with `key`.
    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), MerkleError> {
        if self.root_hash != self.root_hash.to_ascii_lowercase() {
            return Err(MerkleError::Format("root_hash is not lower-case hex".into()));
        }
        self.root()?;
        if !is_utc_rfc3339(&self.timestamp) {
            return Err(MerkleError::Format(format!(
                "timestamp {:?} is not RFC 3339 UTC",
                self.timestamp
            )));
        }
        if self.key_id != key_id(key) {
            return Err(MerkleError::Invalid("signed with another key (key_id differs)"));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| MerkleError::Format(format!("signature is not base64: {e}")))?;
        let signature = ed25519_dalek::Signature::from_slice(&raw)
            .map_err(|_| MerkleError::Format("signature is not 64 bytes".into()))?;
        key.verify(
            &head_message(self.tree_size, &self.root_hash, &self.timestamp),
            &signature,
        )
        .map_err(|_| MerkleError::Invalid("the signature does not match"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Every perfect node of a tree over `leaves`, as a store would keep them.
    fn build(leaves: &[Hash]) -> (Frontier, HashMap<NodeId, Hash>) {
        let mut frontier = Frontier::new();
        let mut nodes = HashMap::new();
        for leaf in leaves {
            frontier.push(*leaf, |id, h| {
                nodes.insert(id, *h);
            });
        }
        (frontier, nodes)
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&(i as u64).to_be_bytes())).collect()
    }

    /// RFC 9162's test vectors as in Certificate Transparency's reference code
    /// (the eight leaves of `merkle_tree_test.cc`): roots of the first 1..8 leaves.
    #[test]
    fn known_roots() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let hashed: Vec<Hash> = inputs.iter().map(|i| leaf_hash(i)).collect();
        for n in 1..=8 {
            let (frontier, _) = build(&hashed[..n]);
            assert_eq!(to_hex(&frontier.root()), roots[n - 1], "{n} leaves");
            assert_eq!(to_hex(&root_of_leaf_hashes(&hashed[..n])), roots[n - 1]);
        }
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn flip(h: &Hash, byte: usize, bit: u8) -> Hash {
        let mut h = *h;
        h[byte % 32] ^= 1 << (bit % 8);
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The incremental tree is the recursive one, and the frontier read back from
        /// the stored nodes is the live one.
        #[test]
        fn frontier_is_the_recursive_root(n in 0usize..300) {
            let all = leaves(n);
            let (frontier, nodes) = build(&all);
            prop_assert_eq!(frontier.root(), root_of_leaf_hashes(&all));
            let stored: Vec<Hash> = Frontier::ids(n as u64).iter().map(|id| nodes[id]).collect();
            prop_assert_eq!(&Frontier::from_nodes(n as u64, stored).unwrap(), &frontier);
            for size in 0..=n as u64 {
                let mut get = |id: NodeId| nodes.get(&id).copied();
                prop_assert_eq!(subtree_hash(0, size, &mut get).unwrap(), root_of_leaf_hashes(&all[..size as usize]));
            }
        }

        /// Every inclusion proof verifies, and fails with any bit of the leaf, the
        /// path or the root changed, or another index or size.
        #[test]
        fn inclusion_proofs(n in 1u64..200, seed in any::<u64>(), byte in 0usize..32, bit in 0u8..8) {
            let all = leaves(n as usize);
            let (_, nodes) = build(&all);
            let mut get = |id: NodeId| nodes.get(&id).copied();
            let size = 1 + seed % n;
            let index = (seed / 7) % size;
            let root = root_of_leaf_hashes(&all[..size as usize]);
            let path = inclusion_proof(index, size, &mut get).unwrap();
            let leaf = all[index as usize];
            prop_assert!(verify_inclusion(index, size, &leaf, &path, &root).is_ok());
            prop_assert!(verify_inclusion(index, size, &flip(&leaf, byte, bit), &path, &root).is_err());
            prop_assert!(verify_inclusion(index, size, &leaf, &path, &flip(&root, byte, bit)).is_err());
            for i in 0..path.len() {
                let mut bad = path.clone();
                bad[i] = flip(&bad[i], byte, bit);
                prop_assert!(verify_inclusion(index, size, &leaf, &bad, &root).is_err());
            }
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(other, size, &leaf, &path, &root).is_err());
                let mut longer = path.clone();
                longer.push(leaf);
                prop_assert!(verify_inclusion(index, size, &leaf, &longer, &root).is_err());
                prop_assert!(verify_inclusion(index, size, &leaf, &path[..path.len() - 1], &root).is_err());
            }
            // The JSON form round-trips and verifies.
            let proof = InclusionProof {
                leaf_index: index,
                tree_size: size,
                leaf_hash: to_hex(&leaf),
                audit_path: path.iter().map(|h| to_hex(h)).collect(),
            };
            prop_assert!(proof.verify(&root).is_ok());
        }

        /// Every consistency proof verifies, and fails with any bit of either root or
        /// of the proof changed.
        #[test]
        fn consistency_proofs(n in 1u64..200, a in any::<u64>(), b in any::<u64>(), byte in 0usize..32, bit in 0u8..8) {
            let all = leaves(n as usize);
            let (_, nodes) = build(&all);
            let mut get = |id: NodeId| nodes.get(&id).copied();
            let second = 1 + a % n;
            let first = 1 + b % second;
            let (r1, r2) = (root_of_leaf_hashes(&all[..first as usize]), root_of_leaf_hashes(&all[..second as usize]));
            let proof = consistency_proof(first, second, &mut get).unwrap();
            prop_assert!(verify_consistency(first, second, &r1, &r2, &proof).is_ok());
            prop_assert!(verify_consistency(first, second, &flip(&r1, byte, bit), &r2, &proof).is_err());
            prop_assert!(verify_consistency(first, second, &r1, &flip(&r2, byte, bit), &proof).is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i], byte, bit);
                prop_assert!(verify_consistency(first, second, &r1, &r2, &bad).is_err());
            }
            if first < second {
                // A history with one leaf changed before `first` is not an extension.
                let mut changed = all.clone();
                let victim = (b % first) as usize;
                changed[victim] = flip(&changed[victim], byte, bit);
                let forged = root_of_leaf_hashes(&changed[..second as usize]);
                prop_assert!(verify_consistency(first, second, &r1, &forged, &proof).is_err());
                let mut longer = proof.clone();
                longer.push(r1);
                prop_assert!(verify_consistency(first, second, &r1, &r2, &longer).is_err());
                prop_assert!(verify_consistency(first, second, &r1, &r2, &proof[..proof.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn proofs_refuse_what_is_out_of_range() {
        let (_, nodes) = build(&leaves(5));
        let mut get = |id: NodeId| nodes.get(&id).copied();
        assert!(inclusion_proof(5, 5, &mut get).is_err());
        assert!(consistency_proof(0, 5, &mut get).is_err());
        assert!(consistency_proof(4, 3, &mut get).is_err());
        assert!(matches!(
            inclusion_proof(0, 9, &mut get),
            Err(MerkleError::MissingNode(_))
        ));
        assert!(verify_consistency(0, 5, &empty_root(), &[0; 32], &[]).is_ok());
        assert!(verify_consistency(3, 3, &[1; 32], &[1; 32], &[]).is_ok());
        assert!(verify_consistency(3, 3, &[1; 32], &[2; 32], &[]).is_err());
        let needed = nodes_needed(|get| {
            let _ = inclusion_proof(2, 5, &mut |id| get(id));
        });
        assert_eq!(
            needed,
            vec![
                NodeId { level: 0, index: 3 },
                NodeId { level: 0, index: 4 },
                NodeId { level: 1, index: 0 }
            ]
        );
    }

    #[test]
    fn tree_heads_sign_and_verify() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let head = SignedTreeHead::sign(5, &[9u8; 32], "2026-12-06T00:00:00.000Z".into(), &key);
        let public = key.verifying_key();
        assert!(head.verify(&public).is_ok());
        assert_eq!(
            String::from_utf8(head_message(5, &head.root_hash, &head.timestamp)).unwrap(),
            format!(
                r#"{{"root_hash":"{}","timestamp":"2026-12-06T00:00:00.000Z","tree_size":5}}"#,
                head.root_hash
            )
        );
        let mut other = head.clone();
        other.tree_size = 6;
        assert!(other.verify(&public).is_err());
        let mut other = head.clone();
        other.root_hash = to_hex(&[8u8; 32]);
        assert!(other.verify(&public).is_err());
        let mut other = head.clone();
        other.timestamp = "2026-12-06T00:00:01.000Z".into();
        assert!(other.verify(&public).is_err());
        let stranger = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(head.verify(&stranger).is_err());
        assert_eq!(
            public_key_from_base64(&public_key_base64(&public)).unwrap(),
            public
        );
        assert!(serde_json::from_str::<SignedTreeHead>(r#"{"tree_size":1}"#).is_err());
    }
}
