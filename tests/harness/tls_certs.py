"""A throwaway CA and leaf certificates for TLS tests (generated with `cryptography`, valid one day)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Leaf:
    cert: str  # PEM path (leaf only)
    key: str  # PEM path
    combined: str  # cert + key in one file (baresip's sip_certificate)


class TestCa:
    """`TestCa(tmp_path, "ca").leaf("localhost")` -> a certificate for that DNS name or IP, signed by the CA."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {name}")])
        self._subject = subject
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
                .sign(self._key, hashes.SHA256()))
        self.cert = str(directory / f"{name}.pem")
        Path(self.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, host: str) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self._subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([san]), False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .sign(self._key, hashes.SHA256()))
        stem = self.dir / f"{self.name}-{host}"
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        paths = Leaf(f"{stem}.crt", f"{stem}.key", f"{stem}.combined.pem")
        Path(paths.cert).write_bytes(cert_pem)
        Path(paths.key).write_bytes(key_pem)
        Path(paths.combined).write_bytes(cert_pem + key_pem)
        return paths
