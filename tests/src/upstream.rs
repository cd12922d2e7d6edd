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
/// The same over IPv6 (unique local addresses outside Flatnet's fd87::/16).
pub const HOST_UPLINK6: &str = "fd98:18::1";
pub const UPSTREAM6: &str = "fd98:18::2";
pub const UPSTREAM6_URL: &str = "http://[fd98:18::2]:8080/";

/// Answers every GET with the client address the upstream saw, over IPv4 and IPv6.
const ECHO_SOURCE: &str = "import http.server as h, socket, threading
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class V6(h.HTTPServer):
    address_family = socket.AF_INET6
threading.Thread(target=V6(('fd98:18::2', 8080), H).serve_forever, daemon=True).start()
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
        // IPv6 without duplicate address detection, so the addresses are usable at once.
        for (netns, dev, addr) in [(host, "up0", HOST_UPLINK6), (&ns, "eth0", UPSTREAM6)] {
            crate::run_ok(Command::new("ip").args([
                "-n",
                netns.name(),
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ]));
        }
        for (dst, via) in [("10.87.0.0/16", HOST_UPLINK), ("fd87::/16", HOST_UPLINK6)] {
            crate::run_ok(Command::new("ip").args([
                "-n",
                ns.name(),
                "route",
                "add",
                dst,
                "via",
                via,
            ]));
        }
        let server = ns.spawn(&["python3", "-c", ECHO_SOURCE]);
        // Both listeners up before the first request.
        let listening = crate::poll(std::time::Duration::from_secs(5), || {
            let out = ns.exec(&["ss", "-Hltn", "sport", "=", ":8080"]);
            String::from_utf8_lossy(&out.stdout).lines().count() >= 2
        });
        assert!(listening, "the upstream's echo server did not start");
        Upstream {
            _server: server,
            _ns: ns,
        }
    }
}
