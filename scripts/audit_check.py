#!/usr/bin/env python3
"""Checks NebengJek audit proofs by hand, with nothing of NebengJek's code.

  audit_check.py head RECEIPT.json PUBLIC_KEY_BASE64
      checks a signed tree head's Ed25519 signature over
      JCS({tree_size, root_hash, timestamp}) and that key_id = SHA-256(public key).
  audit_check.py root HASHES.txt
      prints the RFC 9162 Merkle root over event hashes (hex, one a line, position order).
  audit_check.py inclusion PROOF.json ROOT_HEX
      checks an inclusion proof ({leaf_index, tree_size, leaf_hash, audit_path}).
  audit_check.py consistency PROOF.json FIRST_ROOT_HEX SECOND_ROOT_HEX
      checks a consistency proof ({first, second, proof}).

Exit status 0 when the check holds, 1 when it does not. Needs the `cryptography`
package for signatures; when it is missing, the script makes a virtual environment
next to itself (scripts/.venv-audit) and installs it there from PyPI.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys


def ensure_cryptography():
    try:
        import cryptography  # noqa: F401
        return
    except ImportError:
        pass
    venv = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv-audit")
    python = os.path.join(venv, "bin", "python")
    if os.environ.get("AUDIT_CHECK_IN_VENV"):
        sys.exit("cannot import cryptography even in " + venv)
    if not os.path.exists(python):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([python, "-m", "pip", "install", "--quiet", "cryptography"])
    os.environ["AUDIT_CHECK_IN_VENV"] = "1"
    os.execv(python, [python] + sys.argv)


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves):
    """MTH (RFC 9162 2.1.1) over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def verify_inclusion(index, size, leaf, path, expected_root):
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0 or first > second or not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def check_head(head, public_key_b64):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = base64.b64decode(public_key_b64)
    if hashlib.sha256(raw).hexdigest() != head["key_id"]:
        print("key_id is not the SHA-256 of this public key")
        return False
    # JCS of three members: keys sorted, no spaces; the values are an integer and two
    # ASCII strings, which json.dumps renders canonically.
    message = json.dumps(
        {"root_hash": head["root_hash"], "timestamp": head["timestamp"], "tree_size": head["tree_size"]},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(head["signature"]), message)
    except InvalidSignature:
        print("the signature does not match")
        return False
    return True


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    what = argv[1]
    if what == "head":
        ensure_cryptography()
        with open(argv[2]) as f:
            ok = check_head(json.load(f), argv[3])
    elif what == "root":
        with open(argv[2]) as f:
            leaves = [leaf_hash(bytes.fromhex(line.strip())) for line in f if line.strip()]
        print(root(leaves).hex())
        return 0
    elif what == "inclusion":
        with open(argv[2]) as f:
            p = json.load(f)
        ok = verify_inclusion(
            p["leaf_index"], p["tree_size"], bytes.fromhex(p["leaf_hash"]),
            [bytes.fromhex(h) for h in p["audit_path"]], bytes.fromhex(argv[3]))
    elif what == "consistency":
        with open(argv[2]) as f:
            p = json.load(f)
        ok = verify_consistency(
            p["first"], p["second"], bytes.fromhex(argv[3]), bytes.fromhex(argv[4]),
            [bytes.fromhex(h) for h in p["proof"]])
    else:
        print(__doc__)
        return 2
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
