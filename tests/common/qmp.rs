//! A minimal QMP client over QEMU's `-qmp unix:PATH,server=on,wait=off`:
//! the tests resize devices and read their state from the host side, as a
//! management tool would. Messages are one JSON document a line.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP connection. Events that come between replies are kept in
/// [`Qmp::events`].
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received so far, in order.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until `timeout` while QEMU creates the socket),
    /// reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot connect to QMP at {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP greeting expected, got {greeting}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| format!("bad QMP message {:?}: {e}", line.trim_end())),
            Err(e) => Err(format!("reading QMP: {e}")),
        }
    }

    /// Runs `command` with `arguments` (a JSON object, or `None`); returns
    /// the `return` value, or the `error` as text. Events read meanwhile go
    /// to [`Qmp::events`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        // One write for the whole line, not one per token.
        let line = format!("{msg}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing QMP: {e}"))?;
        loop {
            let mut reply = self.read_message()?;
            if let Some(r) = reply.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = reply.get("error") {
                return Err(format!("QMP {command}: {e}"));
            }
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            return Err(format!("unexpected QMP message {reply}"));
        }
    }

    /// `qom-set PATH PROPERTY VALUE`, VALUE being JSON text.
    pub fn qom_set(&mut self, path: &str, property: &str, value: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(value)
            .map_err(|e| format!("qom-set {path} {property}: bad JSON {value:?}: {e}"))?;
        let args = json!({ "path": path, "property": property, "value": value });
        self.execute("qom-set", Some(args)).map(|_| ())
    }

    /// The `data` of the memory device `id` in `query-memory-devices`.
    pub fn memory_device(&mut self, id: &str) -> Result<Value, String> {
        let devices = self.execute("query-memory-devices", None)?;
        devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("data"))
            .find(|d| d.get("id").and_then(Value::as_str) == Some(id))
            .cloned()
            .ok_or_else(|| format!("no memory device {id:?} in {devices}"))
    }
}
