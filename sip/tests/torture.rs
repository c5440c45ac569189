//! RFC 4475 torture messages, reproduced as faithfully as we could, as the
//! acceptance set for the parser. `{CL}` in a header section is replaced by
//! the real body length; the original messages' lengths depend on exact
//! SDP bytes we re-typed.

use sip::message::{Method, Scheme, SipMessage};
use sip::{error_response, parse_message, Message, ParseError, StreamFramer};

/// Joins a header section (lines separated by '\n') with CRLF, appends the
/// blank line and the body.
fn wire(head: &str, body: &[u8]) -> Vec<u8> {
    let head = head.replace("{CL}", &body.len().to_string());
    let mut out = head
        .trim_start_matches('\n')
        .replace('\n', "\r\n")
        .into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

const SDP: &str = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";

fn request(buf: &[u8]) -> sip::Request {
    match parse_message(buf) {
        Ok(Message::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn response(buf: &[u8]) -> sip::Response {
    match parse_message(buf) {
        Ok(Message::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn tag_of(addr: Option<sip::message::NameAddr>) -> Option<String> {
    addr.and_then(|a| a.tag().map(str::to_string))
}

// 3.1.1.1 wsinv: short tortuous INVITE.
#[test]
fn wsinv() {
    let head = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : {CL}
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33";
    let req = request(&wire(head, SDP.as_bytes()));
    assert_eq!(req.method, Method::Invite);
    assert_eq!(req.uri.param("unknownparam"), Some(None));
    assert_eq!(tag_of(req.to()).as_deref(), Some("1918181833n"));
    let from = req.from().expect("from");
    assert_eq!(from.display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(req.max_forwards(), Some(68));
    assert_eq!(req.cseq(), Some((9, Method::Invite)));
    let vias = req.vias();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].host, "192.0.2.2");
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[1].transport, "TCP");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(req.headers.get("Subject"), Some(""));
    assert_eq!(
        req.headers.get("newfangledheader"),
        Some("newfangled value continued newfangled value")
    );
    let contact = req.contact().expect("contact");
    assert_eq!(contact.display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(contact.param("newparam"), Some(Some("newvalue")));
    assert_eq!(contact.param("secondparam"), Some(None));
    assert_eq!(contact.param("q"), Some(Some("0.33")));
    assert_eq!(req.body, SDP.as_bytes());
}

// 3.1.1.2 intmeth: wide range of valid characters.
#[test]
fn intmeth() {
    let head = "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}\";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~: \u{5927}\u{505c}\u{96fb}
Content-Length: 0";
    let req = request(&wire(head, b""));
    assert_eq!(
        req.method,
        Method::Other("!interesting-Method0123456789_*+`.%indeed'~".into())
    );
    assert_eq!(req.uri.host, "example.com");
    assert_eq!(req.uri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
    assert_eq!(
        req.to().expect("to").display.as_deref(),
        Some("BEL:\x07 NUL:\x00 DEL:\x7f")
    );
    let from = req.from().expect("from");
    assert_eq!(
        from.display.as_deref(),
        Some("token1~` token2'+_ token3*%!.-")
    );
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(
        req.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(req.max_forwards(), Some(255));
    assert_eq!(
        req.headers.get("extensionHeader-!.%*+_`'~"),
        Some("\u{5927}\u{505c}\u{96fb}")
    );
}

// 3.1.1.3 esc01: escaped characters within quotes and URIs.
#[test]
fn esc01() {
    let head = "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: {CL}";
    let req = request(&wire(head, SDP.as_bytes()));
    assert_eq!(req.uri.user.as_deref(), Some("sips%3Auser%40example.com"));
    assert_eq!(req.uri.host, "example.net");
    assert_eq!(req.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    assert_eq!(req.content_type(), Some("application/sdp"));
    assert_eq!(
        req.contact().expect("contact").uri.param("n%61me"),
        Some(Some("v%61lue%25%34%31"))
    );
}

// 3.1.1.4 escnull: escaped nulls in URIs, compact Content-Length.
#[test]
fn escnull() {
    let head = "REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0";
    let req = request(&wire(head, b""));
    assert_eq!(req.method, Method::Register);
    assert_eq!(tag_of(req.from()).as_deref(), Some("839923423"));
    assert_eq!(req.headers.get_all_split("Contact").len(), 2);
    let reg = sip::registrar::parse_register(&req).expect("valid register");
    assert_eq!(reg.aor_user, "null-%00-null");
    assert_eq!(reg.contacts.len(), 2);
}

// 3.1.1.5 esc02: escaped method token and header name are not REGISTER /
// Contact.
#[test]
fn esc02() {
    let head = "RE%47IST%45R sip:registrar.example.com SIP/2.0
To: \"%Z%45\" <sip:resource@example.com>
From: \"%Z%45\" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209asdjf
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0";
    let req = request(&wire(head, b""));
    assert_eq!(req.method, Method::Other("RE%47IST%45R".into()));
    assert_eq!(req.headers.get_all("Contact").len(), 2);
    assert_eq!(
        req.headers.get("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

// 3.1.1.6 lwsdisp: no LWS between display name and <.
#[test]
fn lwsdisp() {
    let head = "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0";
    let req = request(&wire(head, b""));
    let from = req.from().expect("from");
    assert_eq!(from.display.as_deref(), Some("caller"));
    assert_eq!(from.tag(), Some("323"));
}

// 3.1.1.7 longreq: long values in header fields (generated).
#[test]
fn longreq() {
    let long = "unknowheadervalue".repeat(50);
    let mut head = String::from("INVITE sip:user@example.com SIP/2.0\n");
    head.push_str(&format!("To: \"I have a user name of {} proportion\" <sip:user@example.com:6000;unknownparam1=very{}longvalue;longparam{}name=shortvalue>\n", "extreme".repeat(10), "long".repeat(30), "long".repeat(30)));
    head.push_str(&format!(
        "From: sip:amazinglylongcallername{}@example.net;tag=12{}982\n",
        "long".repeat(30),
        "982".repeat(30)
    ));
    head.push_str(&format!(
        "Call-ID: longreq.one{}really@192.0.2.1\n",
        "really".repeat(40)
    ));
    head.push_str("CSeq: 3882340 INVITE\nMax-Forwards: 70\n");
    for i in 0..30 {
        head.push_str(&format!(
            "Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{}\n",
            "longbranch".repeat(5)
        ));
    }
    head.push_str(&format!("Unknown-LongHeader: {long}\n"));
    head.push_str(&format!(
        "Record-Route: {}\n",
        (0..20)
            .map(|i| format!("<sip:{}{i}.example.com;lr>", "x".repeat(40)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    head.push_str("Content-Type: application/sdp\nl: {CL}");
    let req = request(&wire(&head, SDP.as_bytes()));
    assert_eq!(req.vias().len(), 30);
    assert_eq!(req.headers.get_all_split("Record-Route").len(), 20);
    assert_eq!(req.to().expect("to").uri.port, Some(6000));
}

// 3.1.1.8 dblreq: extra trailing octets in a UDP datagram are not a second
// message; the body is cut to Content-Length.
#[test]
fn dblreq() {
    let register = "REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0";
    let invite = "INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: {CL}";
    let mut buf = wire(register, b"");
    buf.extend_from_slice(&wire(invite, SDP.as_bytes()));
    let req = request(&buf);
    assert_eq!(req.method, Method::Register);
    assert!(req.body.is_empty());
    // On a stream the same bytes are two messages.
    let mut framer = StreamFramer::new();
    framer.push(&buf);
    let methods: Vec<Method> = std::iter::from_fn(|| framer.next_message())
        .map(|m| match m {
            Ok(Message::Request(r)) => r.method,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(methods, vec![Method::Register, Method::Invite]);
}

// 3.1.1.9 semiuri: semicolon-separated parameters in the URI user part.
#[test]
fn semiuri() {
    let head = "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0";
    let req = request(&wire(head, b""));
    assert_eq!(req.uri.user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(req.uri.host, "example.com");
    assert!(req.uri.params.is_empty());
}

// 3.1.1.10 transports: varied and unknown transport types.
#[test]
fn transports() {
    let head = "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0";
    let req = request(&wire(head, b""));
    let transports: Vec<String> = req.vias().into_iter().map(|v| v.transport).collect();
    assert_eq!(transports, vec!["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(req.call_id(), Some("transports.kijh4akdnaqjkwendsasfdj"));
}

// 3.1.1.11 mpart01: multipart MIME body with binary content.
#[test]
fn mpart01() {
    let head = "MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: {CL}";
    let mut body = b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\nHello\r\n--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n".to_vec();
    body.extend_from_slice(&[
        0x30, 0x82, 0x01, 0x52, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x00, 0xff, 0xfe,
        0x0d, 0x0a, 0x0d, 0x0a,
    ]);
    body.extend_from_slice(b"\r\n--7a9cbec02ceef655--\r\n");
    let req = request(&wire(head, &body));
    assert_eq!(req.method, Method::Message);
    assert_eq!(req.body, body);
    assert_eq!(req.headers.get("Identity").map(str::len), Some(172));
}

// 3.1.1.12 unreason: UTF-8 in the reason phrase.
#[test]
fn unreason() {
    let head = "SIP/2.0 200 = 2**3 * 5**2 \u{43d}\u{43e} \u{441}\u{442}\u{43e} \u{434}\u{435}\u{432}\u{44f}\u{43d}\u{43e}\u{441}\u{442}\u{43e} \u{434}\u{435}\u{432}\u{44f}\u{442}\u{44c} - \u{43f}\u{440}\u{43e}\u{441}\u{442}\u{43e}\u{435}
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: {CL}
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>";
    let resp = response(&wire(head, SDP.as_bytes()));
    assert_eq!(resp.status, 200);
    assert!(resp.reason.starts_with("= 2**3 * 5**2 \u{43d}\u{43e}"));
    assert_eq!(resp.cseq(), Some((35, Method::Invite)));
}

// 3.1.1.13 noreason: empty reason phrase.
#[test]
fn noreason() {
    for start in ["SIP/2.0 100 ", "SIP/2.0 100"] {
        let head = format!(
            "{start}
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>"
        );
        let resp = response(&wire(&head, b""));
        assert_eq!((resp.status, resp.reason.as_str()), (100, ""));
    }
}

#[test]
fn bare_lf_tel_and_ipv6() {
    let text = "INVITE tel:+861012345678;phone-context=example.com SIP/2.0\nVia: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKv6\nFrom: <tel:+861099998888>;tag=1\nTo: <tel:+861012345678>\nCall-ID: lf@x\nCSeq: 1 INVITE\n\nbody";
    let req = request(text.as_bytes());
    assert_eq!(req.uri.scheme, Scheme::Tel);
    assert_eq!(req.uri.user.as_deref(), Some("+861012345678"));
    assert_eq!(req.top_via().expect("via").host, "[2001:db8::1]");
    assert_eq!(req.body, b"body");
    assert_eq!(req.max_forwards(), None);
}

// The invalid messages (RFC 4475 3.1.2 and 3.3).
const BASE: &str = "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: invalid.1234abcd@example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0";

fn replace_line(prefix: &str, with: &str) -> Vec<u8> {
    let head: Vec<&str> = BASE
        .lines()
        .map(|l| if l.starts_with(prefix) { with } else { l })
        .collect();
    wire(&head.join("\n"), b"")
}

fn assert_rejected(name: &str, buf: &[u8]) -> ParseError {
    match parse_message(buf) {
        Err(e) => e,
        Ok(m) => panic!("{name} was accepted: {m:?}"),
    }
}

#[test]
fn invalid_messages_are_rejected() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // badinv01: extraneous header field separators.
        (
            "badinv01",
            replace_line("Via:", "Via: SIP/2.0/UDP 192.0.2.15;;,;,,"),
        ),
        (
            "badinv01-contact",
            wire(
                &format!("{BASE}\nContact: \"Joe\" <sip:joe@example.org>;;;;"),
                b"",
            ),
        ),
        // clerr: Content-Length larger than the message.
        (
            "clerr",
            wire(&BASE.replace("l: 0", "Content-Length: 9999"), b"v=0\r\n"),
        ),
        // ncl: negative Content-Length.
        (
            "ncl",
            wire(&BASE.replace("l: 0", "Content-Length: -999"), b""),
        ),
        // scalar02: overlarge scalar values.
        (
            "scalar02-cseq",
            replace_line("CSeq:", "CSeq: 36893488147419103232 OPTIONS"),
        ),
        (
            "scalar02-maxfwd",
            replace_line("Max-Forwards:", "Max-Forwards: 300"),
        ),
        (
            "cseq-2^31",
            replace_line("CSeq:", "CSeq: 2147483648 OPTIONS"),
        ),
        // quotbal: unterminated quoted string in display name.
        (
            "quotbal",
            replace_line("To:", "To: \"Mr. J. User <sip:j.user@example.com>"),
        ),
        // ltgtruri: <> around the Request-URI.
        (
            "ltgtruri",
            replace_line("OPTIONS", "OPTIONS <sip:user@example.com> SIP/2.0"),
        ),
        // lwsruri: LWS inside the Request-URI.
        (
            "lwsruri",
            replace_line("OPTIONS", "OPTIONS sip:user@example.com; lr SIP/2.0"),
        ),
        // lwsstart: several SPs between Request-Line elements.
        (
            "lwsstart",
            replace_line("OPTIONS", "OPTIONS  sip:user@example.com  SIP/2.0"),
        ),
        // trws: SP after the version.
        (
            "trws",
            replace_line("OPTIONS", "OPTIONS sip:user@example.com SIP/2.0 "),
        ),
        // escruri: headers in the Request-URI.
        (
            "escruri",
            replace_line(
                "OPTIONS",
                "OPTIONS sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
            ),
        ),
        // baddate: non-GMT Date.
        (
            "baddate",
            wire(&format!("{BASE}\nDate: Fri, 01 Jan 2010 16:00:00 EST"), b""),
        ),
        // regbadct: addr-spec with URI headers outside <>.
        (
            "regbadct",
            wire(
                &format!("{BASE}\nContact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
                b"",
            ),
        ),
        // badaspec: spaces inside the addr-spec.
        (
            "badaspec",
            replace_line("To:", "To: \"Watson, Thomas\" < sip:t.watson@example.org >"),
        ),
        // baddn: non-token characters in an unquoted display name.
        (
            "baddn",
            replace_line(
                "From:",
                "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            ),
        ),
        // badvers: unknown protocol version.
        (
            "badvers",
            replace_line("OPTIONS", "OPTIONS sip:user@example.com SIP/7.0"),
        ),
        // mismatch01: start line and CSeq method differ.
        ("mismatch01", replace_line("CSeq:", "CSeq: 60 INVITE")),
        // mismatch02: unknown method with CSeq mismatch.
        (
            "mismatch02",
            replace_line("OPTIONS", "NEWMETHOD sip:user@example.com SIP/2.0"),
        ),
        // insuf: missing required headers.
        ("insuf-callid", replace_line("Call-ID:", "X-Nothing: 1")),
        ("insuf-via", replace_line("Via:", "X-Nothing: 1")),
        ("insuf-from", replace_line("From:", "X-Nothing: 1")),
        // multi01: multiple values in single-value headers.
        (
            "multi01",
            wire(&format!("{BASE}\nCall-ID: other@example.com"), b""),
        ),
        (
            "multi01-to",
            wire(&format!("{BASE}\nt: sip:other@example.com"), b""),
        ),
        // Garbage.
        ("empty", Vec::new()),
        (
            "no-blank-line",
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: x".to_vec(),
        ),
        (
            "not-utf8",
            replace_line("To:", "To: \"\u{7f}\" <sip:a@b>")
                .into_iter()
                .map(|b| if b == 0x7f { 0xff } else { b })
                .collect(),
        ),
        ("too-large", vec![b'a'; sip::MAX_MESSAGE_BYTES + 1]),
    ];
    for (name, buf) in cases {
        let error = assert_rejected(name, &buf);
        println!("{name}: {error}");
    }
    // bigcode and scalarlg (responses).
    let resp = "SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0";
    assert_eq!(
        assert_rejected("bigcode", &wire(resp, b"")),
        ParseError::BadStatus
    );
    assert_eq!(
        assert_rejected("status-099", &wire(&resp.replace("4294967301", "099"), b"")),
        ParseError::BadStatus
    );
    assert_eq!(
        assert_rejected("status-700", &wire(&resp.replace("4294967301", "700"), b"")),
        ParseError::BadStatus
    );
    let scalarlg = resp
        .replace(
            "4294967301 better not break the receiver",
            "503 Service Unavailable",
        )
        .replace("CSeq: 353494", "CSeq: 36893488147419103232");
    assert_eq!(
        assert_rejected("scalarlg", &wire(&scalarlg, b"")),
        ParseError::BadCSeq
    );
}

#[test]
fn specific_errors() {
    assert_eq!(
        parse_message(&wire(&BASE.replace("l: 0", "Content-Length: 10"), b"abc")),
        Err(ParseError::BodyTooShort {
            expected: 10,
            actual: 3
        })
    );
    assert_eq!(
        parse_message(&replace_line("CSeq:", "CSeq: 60 INVITE")),
        Err(ParseError::CSeqMethodMismatch)
    );
    assert_eq!(
        parse_message(&replace_line("Call-ID:", "X: 1")),
        Err(ParseError::MissingHeader("Call-ID"))
    );
    assert_eq!(
        parse_message(&replace_line(
            "OPTIONS",
            "OPTIONS sip:user@example.com SIP/7.0"
        )),
        Err(ParseError::BadVersion)
    );
}

#[test]
fn error_response_answers_when_it_can() {
    let buf = replace_line("CSeq:", "CSeq: 60 INVITE");
    let error = parse_message(&buf).expect_err("mismatch");
    let reply = error_response(&buf, &error).expect("enough headers to reply");
    assert_eq!(reply.status, 400);
    assert!(reply.reason.contains("CSeq method"), "{}", reply.reason);
    assert_eq!(reply.call_id(), Some("invalid.1234abcd@example.com"));
    assert!(tag_of(reply.to()).is_some());
    // The reply itself must be a valid message.
    assert!(parse_message(&reply.to_bytes()).is_ok());
    // Missing Call-ID: cannot reply.
    let buf = replace_line("Call-ID:", "X: 1");
    let error = parse_message(&buf).expect_err("missing");
    assert!(error_response(&buf, &error).is_none());
    // Never reply to a broken response or to garbage.
    assert!(error_response(b"\xff\xfe garbage", &ParseError::BadStartLine).is_none());
}
