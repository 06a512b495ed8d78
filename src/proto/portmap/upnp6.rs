//! UPnP IGD:2 WANIPv6FirewallControl:1 (IPv6 pinholes) as bytes: the HTTP/SOAP requests and
//! the parsing of their answers, sans IO. igd-next speaks only the IPv4 WANIPConnection
//! service, and these few calls need no more than this.
//!
//! An empty RemoteHost and RemotePort 0 mean any remote (WANIPv6FirewallControl:1 §2.5.4).

/// The service type in the IGD's description.
pub const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1";

/// The longest answer read (a root description or a SOAP response; real ones are a few KiB).
pub const MAX_ANSWER: usize = 64 * 1024;

/// The longest lease an IGD:2 pinhole takes (§2.5.4 LeaseTime: 1 to 86400 s).
pub const MAX_LEASE: u32 = 86_400;

/// UPnP error 704 NoSuchEntry: the pinhole (UniqueID) does not exist (§2.5.7).
pub const NO_SUCH_ENTRY: u32 = 704;

/// The WANIPv6FirewallControl control URL (a path) in a root description, if the IGD offers
/// the service.
pub fn control_url(desc: &str) -> Option<String> {
    let at = desc.find(SERVICE)?;
    let rest = &desc[at..];
    // The serviceType's own <service> element ends before the next one starts.
    let end = rest.find("</service>").unwrap_or(rest.len());
    tag(&rest[..end], "controlURL").map(|u| match u.find("://") {
        // An absolute URL: keep its path.
        Some(i) => {
            let after = &u[i + 3..];
            after
                .find('/')
                .map_or("/".into(), |p| after[p..].to_string())
        }
        None => u,
    })
}

/// The text of the first `<name>…</name>` (any namespace prefix) in `xml`, unescaped.
pub fn tag(xml: &str, name: &str) -> Option<String> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let open = from + i + 1;
        let close = open + xml[open..].find('>')?;
        let head = &xml[open..close];
        let local = head.split_whitespace().next().unwrap_or("");
        let local = local.rsplit(':').next().unwrap_or(local);
        if local == name && !head.ends_with('/') {
            let body = &xml[close + 1..];
            let end = body.find("</")?;
            return Some(unescape(body[..end].trim()));
        }
        from = close;
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SSDP M-SEARCH for the pinhole service (UPnP Device Architecture 1.1 §1.3.2), sent to
/// `host` (`[ff02::c]:1900`, or the router's own address: unicast searches are answered at
/// once).
pub fn msearch(host: &str) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {host}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {SERVICE}\r\n\r\n"
    )
    .into_bytes()
}

/// The port and path of an SSDP answer's LOCATION (`http://[addr]:port/path`); the address is
/// not taken: only the router that answered is asked.
pub fn location(answer: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(answer).ok()?;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let url = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("location").then(|| v.trim())
    })?;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port = match authority.rsplit_once(':') {
        // `[v6]` alone has a colon inside the brackets only.
        Some((h, p)) if !p.ends_with(']') && (h.ends_with(']') || !h.contains(':')) => {
            p.parse().ok()?
        }
        _ => 80,
    };
    Some((
        port,
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

/// `GET path` of the root description from `host` (`[addr]:port`).
pub fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A SOAP call of `action` with `args` in order (UPnP Device Architecture 1.1 §3.2.1).
pub fn soap(host: &str, path: &str, action: &str, args: &[(&str, String)]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{SERVICE}\">"
    );
    for (k, v) in args {
        body.push_str(&format!("<{k}>{}</{k}>", escape(v)));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         SOAPAction: \"{SERVICE}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What an HTTP answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: the body.
    Ok(String),
    /// A SOAP fault (UPnPError errorCode and errorDescription).
    Fault(u32, String),
    /// Anything else, in words.
    Bad(String),
}

/// Parses a whole HTTP/1.x answer (read to the end of the connection); handles chunked
/// bodies. Never panics on hostile input.
pub fn answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Answer::Bad("not an HTTP answer".into());
    };
    let status: Option<u16> = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    match status {
        Some(200) => Answer::Ok(body),
        Some(code) => match tag(&body, "errorCode").and_then(|c| c.parse().ok()) {
            Some(e) => Answer::Fault(e, tag(&body, "errorDescription").unwrap_or_default()),
            None => Answer::Bad(format!("HTTP {code}")),
        },
        None => Answer::Bad("not an HTTP answer".into()),
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        match n {
            Ok(n) if n > 0 && rest.len() >= n && rest.is_char_boundary(n) => {
                out.push_str(&rest[..n]);
                s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// HTTP-, SSDP- and XML-shaped junk as well as random bytes.
    fn routerish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just("HTTP/1.1 200 OK\r\n".to_string()),
            Just("HTTP/1.1 500 E\r\n".to_string()),
            Just("Transfer-Encoding: chunked\r\n".to_string()),
            Just("LOCATION: http://[".to_string()),
            Just("\r\n\r\n".to_string()),
            Just("<errorCode>".to_string()),
            Just("</".to_string()),
            Just(SERVICE.to_string()),
            Just("<controlURL>".to_string()),
            "[0-9a-f:/\\[\\]<>]{0,8}".prop_map(String::from),
            "\\PC{0,6}".prop_map(String::from),
        ];
        prop_oneof![
            proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..300),
        ]
    }

    proptest! {
        /// Nothing a router sends can panic the parsers.
        #[test]
        fn parsers_never_panic(data in routerish()) {
            let _ = answer(&data);
            let _ = location(&data);
            let text = String::from_utf8_lossy(&data);
            let _ = control_url(&text);
            let _ = tag(&text, "errorCode");
        }
    }

    const DESC: &str = "<root><device><serviceList><service>\
        <serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>\
        <controlURL>/ctl/IPConn</controlURL></service><service>\
        <serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>\
        <serviceId>urn:upnp-org:serviceId:WANIPv6Firewall1</serviceId>\
        <controlURL>/ctl/IP6FCtl</controlURL><eventSubURL>/evt/IP6FCtl</eventSubURL>\
        </service></serviceList></device></root>";

    #[test]
    fn the_pinhole_service_is_found_in_the_description() {
        assert_eq!(control_url(DESC).as_deref(), Some("/ctl/IP6FCtl"));
        let abs = DESC.replace("/ctl/IP6FCtl<", "http://[2001:db8::1]:5000/ctl/F<");
        assert_eq!(control_url(&abs).as_deref(), Some("/ctl/F"));
        // IGD:1 only: the service is missing, not taken from another one.
        let v1 = DESC.replace("WANIPv6FirewallControl", "WANPPPConnection");
        assert_eq!(control_url(&v1), None);
    }

    #[test]
    fn ssdp_answers_give_the_description_port_and_path() {
        let m = String::from_utf8(msearch("[2001:db8::1]:1900")).unwrap();
        assert!(m.contains(&format!("ST: {SERVICE}\r\n")) && m.ends_with("\r\n\r\n"));
        let a = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
            Location: http://[2001:db8:1::1]:5000/rootDesc.xml\r\nST: x\r\n\r\n";
        assert_eq!(location(a), Some((5000, "/rootDesc.xml".into())));
        let a = b"HTTP/1.1 200 OK\r\nLOCATION: http://[fe80::1]/d.xml\r\n\r\n";
        assert_eq!(location(a), Some((80, "/d.xml".into())));
        let a = b"HTTP/1.1 200 OK\r\nLOCATION: http://192.0.2.1:49000\r\n\r\n";
        assert_eq!(location(a), Some((49000, "/".into())));
        for bad in [
            &b"NOTIFY * HTTP/1.1\r\nLOCATION: http://[::1]:1/\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nLOCATION: https://[::1]:1/\r\n",
            b"HTTP/1.1 200 OK\r\nLOCATION: http://[::1]:99999/\r\n",
            b"\xff",
        ] {
            assert_eq!(location(bad), None);
        }
    }

    #[test]
    fn soap_calls_and_answers() {
        let r = soap(
            "[2001:db8::1]:5000",
            "/ctl/IP6FCtl",
            "AddPinhole",
            &[("RemoteHost", String::new()), ("InternalPort", "80".into())],
        );
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("POST /ctl/IP6FCtl HTTP/1.1\r\nHost: [2001:db8::1]:5000\r\n"));
        assert!(r.contains(&format!("SOAPAction: \"{SERVICE}#AddPinhole\"")));
        assert!(r.contains("<RemoteHost></RemoteHost><InternalPort>80</InternalPort>"));
        let (_, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));

        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<s:Envelope><u:AddPinholeResponse><UniqueID>7</UniqueID></u:AddPinholeResponse>";
        match answer(ok) {
            Answer::Ok(b) => assert_eq!(tag(&b, "UniqueID").as_deref(), Some("7")),
            other => panic!("{other:?}"),
        }
        let fault = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
            2c\r\n<UPnPError><errorCode>704</errorCode><errorD\r\n1f\r\nescription>x</errorDescription>\r\n0\r\n\r\n";
        assert_eq!(answer(fault), Answer::Fault(704, "x".into()));
        assert_eq!(
            answer(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Answer::Bad("HTTP 404".into())
        );
        for junk in [
            &b""[..],
            b"\r\n\r\n",
            b"HTTP/1.1 200",
            b"\xff\xfe\r\n\r\n2\r\n\xff",
        ] {
            let _ = answer(junk);
        }
        assert_eq!(tag("<a><b/>x</a>", "b"), None);
        assert_eq!(
            tag("<r><u:ID>&lt;1&gt;</u:ID></r>", "ID").as_deref(),
            Some("<1>")
        );
    }
}
