"""Credentials for a local deployment: a throwaway CA, a SuperLink certificate for loopback, SuperNode keys.

The CA signs one server certificate whose names are ``localhost`` and ``127.0.0.1``, which is what the
SuperLink presents on every API (Fleet, Control, runtime). SuperNodes and ``flwr`` trust the CA through
``--root-certificates`` / ``root-certificates``. Each SuperNode gets an ECDSA P-384 key pair in OpenSSH
format, the form ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.
Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Certificates", "NodeKey", "make_certificates", "make_node_key"]

#: Valid for the run and a little after: these certificates are for one local deployment.
VALID_DAYS = 7


@dataclass(frozen=True)
class Certificates:
    """Paths of the CA certificate and of the SuperLink's certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """Paths of one SuperNode's private and public key (OpenSSH format)."""

    private: Path
    public: Path


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet local deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(folder: Path) -> Certificates:
    """A CA and a SuperLink certificate for ``localhost``/``127.0.0.1``, signed by it, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("edgefleet local CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            # Python 3.13's default TLS context (VERIFY_X509_STRICT) wants the key identifiers
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    return Certificates(ca=_write(folder / "ca.crt", ca_cert.public_bytes(pem)),
                        cert=_write(folder / "server.pem", cert.public_bytes(pem)),
                        key=_write(folder / "server.key", _pem_key(key), secret=True))


def make_node_key(folder: Path, name: str) -> NodeKey:
    """An ECDSA P-384 key pair for one SuperNode (``<name>`` and ``<name>.pub``, OpenSSH format)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKey(private=_write(folder / name, private, secret=True),
                   public=_write(folder / f"{name}.pub", public + f" {name}\n".encode()))
