//! A small flattened-device-tree reader and writer for tests: build a tree
//! by hand, or read one (QEMU's `dumpdtb`) and change it. Shared with the
//! QEMU tests (`tests/common` includes this file).

#![allow(dead_code)]

/// A node: its name (`""` for the root), properties and children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub props: Vec<(String, Vec<u8>)>,
    pub children: Vec<Node>,
}

impl Node {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            props: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Sets a property (replacing one of the same name).
    pub fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.props.retain(|(n, _)| n != name);
        self.props.push((name.into(), value.to_vec()));
        self
    }

    /// A property of big-endian cells.
    pub fn u32s(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &v)
    }

    /// `reg` of (address, size) pairs in two cells each.
    pub fn reg64(&mut self, pairs: &[(u64, u64)]) -> &mut Self {
        let cells: Vec<u32> = pairs
            .iter()
            .flat_map(|&(a, s)| [(a >> 32) as u32, a as u32, (s >> 32) as u32, s as u32])
            .collect();
        self.u32s("reg", &cells)
    }

    /// A NUL-terminated string property.
    pub fn string(&mut self, name: &str, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.prop(name, &v)
    }

    pub fn child(&mut self, node: Node) -> &mut Self {
        self.children.push(node);
        self
    }

    /// The child called `name`, if any.
    pub fn find(&mut self, name: &str) -> Option<&mut Node> {
        self.children.iter_mut().find(|c| c.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct Fdt {
    pub root: Node,
    /// `/memreserve/` entries (address, size).
    pub reservations: Vec<(u64, u64)>,
    /// `FDT_NOP` tokens written after the root's first child (what libfdt
    /// leaves behind a deleted node).
    pub nops: usize,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn cstr(b: &[u8], at: usize) -> String {
    let end = at + b[at..].iter().position(|&c| c == 0).unwrap();
    String::from_utf8(b[at..end].to_vec()).unwrap()
}

impl Fdt {
    pub fn new(root: Node) -> Self {
        Self {
            root,
            reservations: Vec::new(),
            nops: 0,
        }
    }

    pub fn nops_after_first_child(mut self, n: usize) -> Self {
        self.nops = n;
        self
    }

    /// Reads a well-formed blob (panics on a bad one: test input).
    pub fn parse(b: &[u8]) -> Self {
        assert_eq!(be32(b, 0), 0xd00d_feed, "not an FDT");
        let (off_struct, off_strings, off_rsv) = (
            be32(b, 8) as usize,
            be32(b, 12) as usize,
            be32(b, 16) as usize,
        );
        let mut reservations = Vec::new();
        let mut at = off_rsv;
        while (be64(b, at), be64(b, at + 8)) != (0, 0) {
            reservations.push((be64(b, at), be64(b, at + 8)));
            at += 16;
        }
        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        let mut at = off_struct;
        loop {
            let token = be32(b, at);
            at += 4;
            match token {
                1 => {
                    let name = cstr(b, at);
                    at += (name.len() + 1 + 3) & !3;
                    stack.push(Node::new(&name));
                }
                2 => {
                    let node = stack.pop().unwrap();
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                3 => {
                    let (len, nameoff) = (be32(b, at) as usize, be32(b, at + 4) as usize);
                    let name = cstr(b, off_strings + nameoff);
                    let value = b[at + 8..at + 8 + len].to_vec();
                    stack.last_mut().unwrap().props.push((name, value));
                    at += 8 + ((len + 3) & !3);
                }
                4 => {}
                9 => break,
                t => panic!("bad token {t}"),
            }
        }
        Self {
            root: root.unwrap(),
            reservations,
            nops: 0,
        }
    }

    /// The blob, packed (its total size is what it holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut strings: Vec<u8> = Vec::new();
        let mut st: Vec<u8> = Vec::new();
        fn put(st: &mut Vec<u8>, v: u32) {
            st.extend_from_slice(&v.to_be_bytes());
        }
        fn node(n: &Node, st: &mut Vec<u8>, strings: &mut Vec<u8>, nops: Option<usize>) {
            put(st, 1);
            st.extend_from_slice(n.name.as_bytes());
            st.push(0);
            while !st.len().is_multiple_of(4) {
                st.push(0);
            }
            for (name, value) in &n.props {
                let mut key = name.as_bytes().to_vec();
                key.push(0);
                let off = match strings.windows(key.len()).position(|w| w == key) {
                    Some(off) => off,
                    None => {
                        strings.extend_from_slice(&key);
                        strings.len() - key.len()
                    }
                };
                put(st, 3);
                put(st, value.len() as u32);
                put(st, off as u32);
                st.extend_from_slice(value);
                while !st.len().is_multiple_of(4) {
                    st.push(0);
                }
            }
            for (i, c) in n.children.iter().enumerate() {
                node(c, st, strings, None);
                if i == 0 {
                    for _ in 0..nops.unwrap_or(0) {
                        put(st, 4);
                    }
                }
            }
            put(st, 2);
        }
        node(&self.root, &mut st, &mut strings, Some(self.nops));
        put(&mut st, 9);
        let off_rsv = 40usize;
        let off_struct = off_rsv + 16 * (self.reservations.len() + 1);
        let off_strings = off_struct + st.len();
        let total = off_strings + strings.len();
        let mut b = Vec::with_capacity(total);
        for v in [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            put(&mut b, v);
        }
        for &(a, s) in self.reservations.iter().chain([&(0, 0)]) {
            b.extend_from_slice(&a.to_be_bytes());
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(&st);
        b.extend_from_slice(&strings);
        b
    }
}
