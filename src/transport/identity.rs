//! The username a verified client certificate gives, as Mosquitto's
//! `use_identity_as_username` (the subject's CN) or a subject alternative name (the
//! first DNS name, e-mail address or URI, in that order). A small DER walker over
//! the certificate webpki has already verified: only the fields needed are read.

/// Which part of a client certificate becomes the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// The certificate gives no username (the CONNECT's own, if any, is used).
    #[default]
    None,
    /// The subject's commonName.
    CommonName,
    /// The first subjectAltName: dNSName, then rfc822Name, then URI.
    SubjectAltName,
}

/// The username `source` picks from a DER certificate, if it has one.
pub fn username(cert_der: &[u8], source: IdentitySource) -> Option<String> {
    match source {
        IdentitySource::None => None,
        IdentitySource::CommonName => common_name(cert_der),
        IdentitySource::SubjectAltName => subject_alt_name(cert_der),
    }
}

/// One DER element: its tag and contents, and what follows it.
fn next(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The fields of the TBSCertificate: (subject, extensions contents).
fn tbs_fields(cert_der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (_, cert, _) = next(cert_der)?;
    let (_, tbs, _) = next(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = next(rest)?;
    if tag == 0xa0 {
        rest = r; // version
    }
    // serial, signature algorithm, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = next(rest)?.2;
    }
    let (_, subject, mut rest) = next(rest)?;
    let mut extensions = None;
    // Bounded by the length of the TBSCertificate.
    while let Some((tag, body, r)) = next(rest) {
        if tag == 0xa3 {
            extensions = Some(next(body)?.1);
        }
        rest = r;
    }
    Some((subject, extensions))
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

fn common_name(cert_der: &[u8]) -> Option<String> {
    let (mut subject, _) = tbs_fields(cert_der)?;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue).
    while let Some((_, mut rdn, r)) = next(subject) {
        while let Some((_, atv, r2)) = next(rdn) {
            let (tag, oid, value) = next(atv)?;
            if tag == 0x06 && oid == OID_CN {
                let (_, text, _) = next(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
            rdn = r2;
        }
        subject = r;
    }
    None
}

fn subject_alt_name(cert_der: &[u8]) -> Option<String> {
    let (_, mut exts) = tbs_fields(cert_der)?;
    let mut exts = exts.take()?;
    while let Some((_, ext, r)) = next(exts) {
        let (tag, oid, mut rest) = next(ext)?;
        if tag == 0x06 && oid == OID_SAN {
            let (tag, _, after) = next(rest)?;
            if tag == 0x01 {
                rest = after; // critical flag
            }
            let (_, octets, _) = next(rest)?;
            let (_, mut names, _) = next(octets)?;
            let mut found: [Option<&[u8]>; 3] = [None; 3];
            while let Some((tag, value, r2)) = next(names) {
                let slot = match tag {
                    0x82 => 0, // dNSName
                    0x81 => 1, // rfc822Name
                    0x86 => 2, // uniformResourceIdentifier
                    _ => 3,
                };
                if slot < 3 && found[slot].is_none() {
                    found[slot] = Some(value);
                }
                names = r2;
            }
            return found
                .iter()
                .flatten()
                .next()
                .and_then(|v| String::from_utf8(v.to_vec()).ok());
        }
        exts = r;
    }
    None
}
