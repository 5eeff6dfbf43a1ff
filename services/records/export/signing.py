"""Ed25519 keys for signing exports: loading, signing, identifying and checking."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.common.settings import ConfigurationError


def key_id(public_key: bytes) -> str:
    """A short, stable name for a raw 32-byte public key (the start of its SHA-256)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class ExportSigner:
    private_key: Ed25519PrivateKey
    ephemeral: bool = False

    @property
    def public_key(self) -> bytes:
        return raw_public_key(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, digest: bytes) -> bytes:
        return self.private_key.sign(digest)

    def public_key_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signer(path: Path | None) -> ExportSigner:
    """The signer of ``path`` (an Ed25519 private key, PEM, unencrypted); without a path, a key
    made for this process only, whose exports verify but whose origin no one can pin."""
    if path is None:
        return ExportSigner(Ed25519PrivateKey.generate(), ephemeral=True)
    key = _private_key(_read(path))
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path}: not an Ed25519 private key in PEM")
    return ExportSigner(key)


def load_public_key(path: Path) -> bytes:
    """The raw public key in ``path``: a PEM public key, or a private key (its public half)."""
    pem = _read(path)
    try:
        key: object = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        private = _private_key(pem)
        key = private.public_key() if isinstance(private, Ed25519PrivateKey) else None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(f"{path}: not an Ed25519 public key in PEM")
    return raw_public_key(key)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read the key ({error.strerror})") from error


def _private_key(pem: bytes) -> object:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def signature_holds(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def write_key_pair(private_path: Path) -> ExportSigner:
    """A new key pair: the private key at ``private_path`` (mode 0600), its public key beside
    it with ``.pub`` appended."""
    signer = ExportSigner(Ed25519PrivateKey.generate())
    pem = signer.private_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    private_path.with_name(private_path.name + ".pub").write_bytes(signer.public_key_pem())
    return signer
