"""Independent checks of what the push proxy sends, with Python's `cryptography` package
(OpenSSL underneath) instead of the proxy's own Rust code: JWT signatures (ES256 for APNs
provider tokens and VAPID, RS256 for the FCM OAuth2 assertion) and RFC 8291 Web Push
decryption (aes128gcm, RFC 8188). Called by `test_support::independent`.

Usage: python3 independent.py OP < request.json  (prints a JSON answer; exit 1 on failure)
"""

import base64
import json
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_key(req):
    if "public_pem" in req:
        return serialization.load_pem_public_key(req["public_pem"].encode())
    if "private_pem" in req:
        return serialization.load_pem_private_key(req["private_pem"].encode(), None).public_key()
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url(req["point"]))


def verify_jwt(req):
    header_b64, claims_b64, sig_b64 = req["jwt"].split(".")
    header = json.loads(b64url(header_b64))
    if header.get("alg") != req["alg"]:
        raise ValueError(f"alg {header.get('alg')}, expected {req['alg']}")
    signed = f"{header_b64}.{claims_b64}".encode()
    sig = b64url(sig_b64)
    key = public_key(req)
    if req["alg"] == "ES256":
        if len(sig) != 64:
            raise ValueError("an ES256 signature is 64 bytes (r || s)")
        der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    elif req["alg"] == "RS256":
        key.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError("unsupported alg")
    return {"header": header, "claims": json.loads(b64url(claims_b64))}


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def webpush_decrypt(req):
    body = base64.b64decode(req["body"])
    ua = serialization.load_pem_private_key(req["ua_private_pem"].encode(), None)
    auth = base64.b64decode(req["auth"])
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public = body[21 : 21 + idlen]
    ciphertext = body[21 + idlen :]
    if len(ciphertext) > rs:
        raise ValueError("more than one record")
    ua_public = ua.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    shared = ua.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public))
    ikm = hkdf(auth, shared, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    end = len(padded.rstrip(b"\x00")) - 1
    if end < 0 or padded[end] != 2:
        raise ValueError("no last-record delimiter")
    return {"plaintext": base64.b64encode(padded[:end]).decode(), "padded_len": len(padded)}


if __name__ == "__main__":
    ops = {"verify_jwt": verify_jwt, "webpush_decrypt": webpush_decrypt}
    try:
        print(json.dumps(ops[sys.argv[1]](json.load(sys.stdin))))
    except Exception as e:  # noqa: BLE001 - the caller reads the message
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
