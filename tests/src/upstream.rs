//! An "upstream" beside a test host: a namespace of its own, linked to the host's namespace by a
//! veth made inside the two (nothing in the machine's own namespace), with an HTTP server that
//! answers every GET with the source address it saw. It is the only place a test's outbound
//! traffic goes; dropping it stops the server and deletes the namespace and the link.

use crate::{Background, Netns};
use std::process::Command;

/// The host's address on the link to the upstream, and the upstream's.
pub const HOST_UPLINK: &str = "198.18.0.1";
pub const UPSTREAM: &str = "198.18.0.2";
pub const UPSTREAM_URL: &str = "http://198.18.0.2:8080/";

/// Answers every GET with the client address the upstream saw.
const ECHO_SOURCE: &str = "import http.server as h
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
h.HTTPServer(('198.18.0.2', 8080), H).serve_forever()
";

pub struct Upstream {
    _server: Background,
    _ns: Netns,
}

impl Upstream {
    /// The upstream of the host whose namespace is `host`, named after it (`<host>u`), with a
    /// route back to the flat range so that an answer to a container's own address can return.
    pub fn beside(host: &Netns) -> Upstream {
        crate::require_tool("python3", "python3");
        let ns = Netns::create(&format!("{}u", host.name()), "upstream");
        host.link_to(
            "up0",
            &format!("{HOST_UPLINK}/24"),
            &ns,
            "eth0",
            &format!("{UPSTREAM}/24"),
        );
        crate::run_ok(Command::new("ip").args([
            "-n",
            ns.name(),
            "route",
            "add",
            "10.87.0.0/16",
            "via",
            HOST_UPLINK,
        ]));
        let server = ns.spawn(&["python3", "-c", ECHO_SOURCE]);
        Upstream {
            _server: server,
            _ns: ns,
        }
    }
}
