//! HPACK (RFC 7541), HTTP/2's header compression, as far as the shim's one call needs it. The
//! request's few headers are written as plain literals (no table, no Huffman code: a couple of
//! hundred bytes once per process). The reply's headers and trailers are read in full, with the
//! static and the dynamic table and Huffman-coded strings, since flatnetd's HTTP/2 library uses
//! all of them.

use std::collections::VecDeque;
use std::fmt;

/// A header block the decoder cannot make sense of (a broken reply, never a bad request).
#[derive(Debug, PartialEq, Eq)]
pub struct Error(&'static str);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad header block: {}", self.0)
    }
}

/// One header field: name and value as sent.
pub type Field = (Vec<u8>, Vec<u8>);

/// Appends `name: value` as a "literal header field without indexing, new name" (section 6.2.2).
pub fn encode(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    encode_string(block, name.as_bytes());
    encode_string(block, value.as_bytes());
}

fn encode_string(block: &mut Vec<u8>, s: &[u8]) {
    encode_integer(block, 0, 7, s.len());
    block.extend_from_slice(s);
}

/// An integer with an N-bit prefix (section 5.1); `flags` are the first byte's other bits.
fn encode_integer(block: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        block.push(flags | value as u8);
        return;
    }
    block.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        block.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    block.push(rest as u8);
}

/// The size of the dynamic table this client allows the daemon (HTTP/2's default,
/// SETTINGS_HEADER_TABLE_SIZE is not sent).
pub const TABLE_SIZE: usize = 4096;

/// Decodes the header blocks of one connection, in the order they arrive (the dynamic table
/// carries over from one block to the next).
pub struct Decoder {
    /// Newest first: index 62 is the front.
    table: VecDeque<Field>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

impl Decoder {
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, Error> {
        let mut at = 0;
        let mut fields = Vec::new();
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                fields.push(self.get(index)?);
            } else if first & 0xc0 == 0x40 {
                let field = self.literal(block, &mut at, 6)?;
                self.insert(field.clone());
                fields.push(field);
            } else if first & 0xe0 == 0x20 {
                // A table size update may only open a block (section 4.2).
                if !fields.is_empty() {
                    return Err(Error("a table size update after a header field"));
                }
                let size = integer(block, &mut at, 5)?;
                if size > TABLE_SIZE {
                    return Err(Error("a table size update above the size allowed"));
                }
                self.max = size;
                self.evict(0);
            } else {
                // Without indexing (0000) or never indexed (0001): the same to a decoder.
                fields.push(self.literal(block, &mut at, 4)?);
            }
        }
        Ok(fields)
    }

    fn literal(&self, block: &[u8], at: &mut usize, prefix: u8) -> Result<Field, Error> {
        let index = integer(block, at, prefix)?;
        let name = if index == 0 {
            string(block, at)?
        } else {
            self.get(index)?.0
        };
        Ok((name, string(block, at)?))
    }

    fn get(&self, index: usize) -> Result<Field, Error> {
        match index {
            0 => Err(Error("index 0")),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(Error("an index past the dynamic table")),
        }
    }

    fn insert(&mut self, field: Field) {
        let size = entry_size(&field);
        if size > self.max {
            // Section 4.4: an entry larger than the table empties it and is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(field);
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(old) => self.size -= entry_size(&old),
                None => break,
            }
        }
    }
}

fn entry_size((name, value): &Field) -> usize {
    name.len() + value.len() + 32
}

fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, Error> {
    const CUT: Error = Error("a truncated integer");
    let max = (1usize << prefix) - 1;
    let first = usize::from(*block.get(*at).ok_or(CUT)?) & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let mut value = max;
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(CUT)?;
        *at += 1;
        if shift > 21 {
            return Err(Error("an integer too large"));
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn string(block: &[u8], at: &mut usize) -> Result<Vec<u8>, Error> {
    let huffman = block.get(*at).is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, at, 7)?;
    let bytes = block
        .get(*at..*at + len)
        .ok_or(Error("a string longer than the block"))?;
    *at += len;
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

/// The static table (appendix A).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The length in bits of each byte's Huffman code (appendix B); the end-of-string symbol (256)
/// has 30. The code is canonical: within one length, codes count up in the order of the symbols,
/// so the lengths alone define it.
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

const EOS: u16 = 256;
const LONGEST: usize = 30;

fn code_length(symbol: u16) -> usize {
    CODE_LENGTHS
        .get(usize::from(symbol))
        .map_or(LONGEST, |&l| usize::from(l))
}

/// The canonical code's tables: how many codes each length has, and the symbols ordered by
/// (length, symbol).
struct Canonical {
    count: [u32; LONGEST + 1],
    symbols: [u16; EOS as usize + 1],
}

/// Built once per process: every Huffman-coded string of a reply reads the same table.
fn canonical() -> &'static Canonical {
    static TABLE: std::sync::OnceLock<Canonical> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut count = [0u32; LONGEST + 1];
        for s in 0..=EOS {
            count[code_length(s)] += 1;
        }
        // Each length's symbols start after those of the shorter lengths, in symbol order.
        let mut next = [0usize; LONGEST + 1];
        for len in 1..=LONGEST {
            next[len] = next[len - 1] + count[len - 1] as usize;
        }
        let mut symbols = [0u16; EOS as usize + 1];
        for s in 0..=EOS {
            let len = code_length(s);
            symbols[next[len]] = s;
            next[len] += 1;
        }
        Canonical { count, symbols }
    })
}

fn huffman_decode(bits: &[u8]) -> Result<Vec<u8>, Error> {
    let table = canonical();
    let mut out = Vec::with_capacity(bits.len() * 8 / 5);
    // The code read so far, its length, the first code of that length and where that length's
    // symbols start in `table.symbols`.
    let (mut code, mut len, mut first, mut start) = (0u32, 0usize, 0u32, 0usize);
    for byte in bits {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            first <<= 1;
            let n = table.count[len];
            if code.wrapping_sub(first) < n {
                let symbol = table.symbols[start + (code - first) as usize];
                if symbol == EOS {
                    return Err(Error("the end-of-string code inside a string"));
                }
                out.push(symbol as u8);
                (code, len, first, start) = (0, 0, 0, 0);
            } else {
                first += n;
                start += n as usize;
                if len == LONGEST {
                    return Err(Error("a Huffman code that does not exist"));
                }
            }
        }
    }
    // Section 5.2: what is left is padding, the first bits of end-of-string (all ones), shorter
    // than a byte.
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(Error("bad padding after a Huffman-coded string"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn text(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The canonical code agrees with codes listed in appendix B.
    fn encode_symbol(symbol: u16) -> (u32, usize) {
        let table = canonical();
        let (mut code, mut prev) = (0u32, code_length(table.symbols[0]));
        for (i, &s) in table.symbols.iter().enumerate() {
            let len = code_length(s);
            if i > 0 {
                code = (code + 1) << (len - prev);
            }
            prev = len;
            if s == symbol {
                return (code, len);
            }
        }
        unreachable!("every symbol is in the table")
    }

    #[test]
    fn the_huffman_code_is_the_rfcs() {
        assert_eq!(encode_symbol(b'0'.into()), (0x0, 5));
        assert_eq!(encode_symbol(b'a'.into()), (0x3, 5));
        assert_eq!(encode_symbol(b' '.into()), (0x14, 6));
        assert_eq!(encode_symbol(b'A'.into()), (0x21, 6));
        assert_eq!(encode_symbol(0), (0x1ff8, 13));
        assert_eq!(encode_symbol(255), (0x3ffffee, 26));
        assert_eq!(encode_symbol(EOS), (0x3fff_ffff, 30));
    }

    /// Appendix C.4: three requests on one connection, Huffman-coded, sharing the dynamic table.
    #[test]
    fn decodes_the_rfcs_requests() {
        let mut d = Decoder::default();
        let one = d
            .decode(&hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
            .unwrap();
        assert_eq!(
            text(&one),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.size, 57);
        let two = d.decode(&hex("828684be5886a8eb10649cbf")).unwrap();
        assert_eq!(
            text(&two),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let three = d
            .decode(&hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
            .unwrap();
        assert_eq!(
            text(&three),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(d.table.len(), 3);
    }

    /// Appendix C.5: responses with a 256-byte table, so that entries are evicted.
    #[test]
    fn evicts_as_the_rfcs_responses_do() {
        let mut d = Decoder::default();
        d.decode(&hex("3fe101")).unwrap(); // a size update to 256
        assert_eq!(d.max, 256);
        let one = d
            .decode(&hex("4803333032580770726976617465611d
                 4d6f6e2c203231204f637420323031332032303a31333a323120474d54
                 6e1768747470733a2f2f7777772e6578616d706c652e636f6d"))
            .unwrap();
        assert_eq!(
            text(&one),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!(d.size, 222);
        let two = d.decode(&hex("4803333037c1c0bf")).unwrap();
        assert_eq!(text(&two)[0], pairs(&[(":status", "307")])[0]);
        assert_eq!(
            text(&two)[3],
            pairs(&[("location", "https://www.example.com")])[0]
        );
        // ":status: 302" was evicted to make room for ":status: 307".
        assert_eq!((d.table.len(), d.size), (4, 222));
        assert_eq!(d.table[0].1, b"307");
    }

    #[test]
    fn reads_what_it_writes() {
        let mut block = Vec::new();
        encode(&mut block, ":path", "/flatnet.v1.Cni/Exec");
        let long = "x".repeat(300);
        encode(&mut block, "x-long", &long);
        let fields = Decoder::default().decode(&block).unwrap();
        assert_eq!(
            text(&fields),
            pairs(&[(":path", "/flatnet.v1.Cni/Exec"), ("x-long", &long)])
        );
    }

    #[test]
    fn broken_blocks_are_errors() {
        let mut d = Decoder::default();
        // Index 0; past both tables; a truncated integer; a string past the block's end.
        for bad in ["80", "ff00", "7f", "0003616263", "40"] {
            assert!(d.decode(&hex(bad)).is_err(), "{bad}");
        }
        // A size update above the allowed 4096, or after a field.
        assert!(d.decode(&hex("3fe21f")).is_err());
        assert!(d.decode(&hex("8220")).is_err());
        // Huffman: padding of a whole byte of ones, and padding that is not ones.
        assert!(d.decode(&hex("00 81 ff 00")).is_err());
        assert!(d.decode(&hex("00 81 00 00")).is_err());
        // '0' (00000) then three ones of padding is fine.
        let ok = d.decode(&hex("00 81 07 81 07")).unwrap();
        assert_eq!(text(&ok), pairs(&[("0", "0")]));
    }
}
