"""
A certificate chain as a public CA hands it out, made for a test: a root
CA, an intermediate CA it signs, and a server certificate for C{localhost}
and 127.0.0.1 the intermediate signs; written as Let's Encrypt writes them
(C{privkey.pem}, C{cert.pem}, C{chain.pem}, C{fullchain.pem}), with the
root apart (C{root.pem}: what a client is told to trust).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclasses.dataclass(frozen=True)
class Chain:
    root: Path  # the root CA's certificate: the client's trust
    privkey: Path  # the server's key
    cert: Path  # the server's certificate alone
    chain: Path  # the intermediate
    fullchain: Path  # the server's certificate, then the intermediate


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(directory: Path) -> Chain:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Test Root CA", root_key, "Test Root CA", root_key, ca=True)
    inter = _certificate("Test Intermediate CA", inter_key, "Test Root CA", root_key, ca=True)
    leaf = _certificate("localhost", leaf_key, "Test Intermediate CA", inter_key, ca=False)

    def pem(certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.PEM)

    chain = Chain(root=directory / "root.pem", privkey=directory / "privkey.pem",
                  cert=directory / "cert.pem", chain=directory / "chain.pem",
                  fullchain=directory / "fullchain.pem")
    chain.root.write_bytes(pem(root))
    chain.privkey.write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    chain.cert.write_bytes(pem(leaf))
    chain.chain.write_bytes(pem(inter))
    chain.fullchain.write_bytes(pem(leaf) + pem(inter))
    return chain
