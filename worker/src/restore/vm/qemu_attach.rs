//! The QEMU arguments and QMP commands that attach restored disks to a new QEMU, from
//! the `qemu-block-graph` configuration the qemu adapter stores in a snapshot.
//!
//! Each restored disk becomes one `-blockdev` (format node over a file node) and one
//! `-device`: the original guest device when the stored command line has one with the
//! disk's `id` (its other properties, such as bus, address and boot index, are kept and
//! its `drive` points at the restored node), else a `virtio-blk-pci` with that id.

use serde_json::{Map, Value, json};

use super::RestoredDiskFile;

/// How to attach the restored disks to a new QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuAttach {
    /// Command-line arguments, in pairs (`-blockdev`, value, `-device`, value, …).
    pub args: Vec<String>,
    /// The same as QMP commands (`blockdev-add`, `device_add`) for a running QEMU.
    pub qmp: Vec<Value>,
}

/// Why no attach commands can be generated.
#[derive(Debug, thiserror::Error)]
pub enum QemuAttachError {
    /// The stored configuration is not the qemu adapter's JSON.
    #[error("the stored QEMU configuration cannot be read: {0}")]
    Config(String),
}

/// Node name of a restored disk's format node.
pub fn node_name(disk: &str) -> String {
    format!("restored-{disk}")
}

/// Builds the `-blockdev`/`-device` arguments and the QMP sequence for `disks`, reusing
/// the guest devices of the stored `qemu-block-graph` configuration `config`.
pub fn qemu_attach(
    config: &str,
    disks: &[RestoredDiskFile],
) -> Result<QemuAttach, QemuAttachError> {
    let config: Value =
        serde_json::from_str(config).map_err(|error| QemuAttachError::Config(error.to_string()))?;
    if !config.is_object() {
        return Err(QemuAttachError::Config("not a JSON object".into()));
    }
    let command_line: Vec<String> = config
        .get("command_line")
        .and_then(Value::as_array)
        .map(|args| {
            args.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let devices: Vec<Map<String, Value>> = command_line
        .windows(2)
        .filter(|pair| pair[0] == "-device")
        .filter_map(|pair| parse_device(&pair[1]))
        .collect();

    let mut attach = QemuAttach {
        args: Vec::new(),
        qmp: Vec::new(),
    };
    for disk in disks {
        let node = node_name(&disk.name);
        let blockdev = json!({
            "driver": disk.format,
            "node-name": node,
            "file": {"driver": "file", "filename": disk.path},
        });
        attach.args.push("-blockdev".into());
        attach.args.push(format!(
            "driver={},node-name={node},file.driver=file,file.filename={}",
            disk.format,
            escape_option(&disk.path)
        ));
        let mut device = devices
            .iter()
            .find(|device| device.get("id").and_then(Value::as_str) == Some(disk.name.as_str()))
            .cloned()
            .unwrap_or_else(|| {
                let mut device = Map::new();
                device.insert("driver".into(), json!("virtio-blk-pci"));
                device.insert("id".into(), json!(disk.name));
                device
            });
        device.insert("drive".into(), json!(node));
        attach.args.push("-device".into());
        attach.args.push(device_option(&device));
        attach
            .qmp
            .push(json!({"execute": "blockdev-add", "arguments": blockdev}));
        attach
            .qmp
            .push(json!({"execute": "device_add", "arguments": Value::Object(device)}));
    }
    Ok(attach)
}

/// Parses a `-device` value: JSON (`{"driver":…}`) or `DRIVER,key=value,…` with `,,`
/// for a literal comma. Values stay strings, as QEMU's option syntax has no types.
fn parse_device(value: &str) -> Option<Map<String, Value>> {
    if value.trim_start().starts_with('{') {
        return serde_json::from_str::<Value>(value)
            .ok()?
            .as_object()
            .cloned();
    }
    let mut device = Map::new();
    for (position, part) in split_options(value).into_iter().enumerate() {
        match part.split_once('=') {
            Some((key, value)) => {
                device.insert(key.to_string(), json!(value));
            }
            None if position == 0 => {
                device.insert("driver".into(), json!(part));
            }
            None => {
                device.insert(part, json!("on"));
            }
        }
    }
    device.contains_key("driver").then_some(device)
}

/// Splits QEMU options at single commas; `,,` is a literal comma.
fn split_options(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
                continue;
            }
            parts.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

/// Writes a device back as `DRIVER,key=value,…`, driver first, then `id`, `drive` and
/// the rest in their order.
fn device_option(device: &Map<String, Value>) -> String {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        other => other.to_string(),
    };
    let mut option = device.get("driver").map(text).unwrap_or_default();
    let first = ["id", "drive"];
    let rest = device
        .keys()
        .filter(|key| key.as_str() != "driver" && !first.contains(&key.as_str()));
    for key in first.iter().copied().chain(rest.map(String::as_str)) {
        if let Some(value) = device.get(key) {
            option.push_str(&format!(",{key}={}", escape_option(&text(value))));
        }
    }
    option
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, path: &str, format: &str) -> RestoredDiskFile {
        RestoredDiskFile {
            name: name.into(),
            path: path.into(),
            format: format.into(),
        }
    }

    #[test]
    fn attach_table() {
        let cases: Vec<(&str, Value, Vec<RestoredDiskFile>, Vec<&str>)> = vec![
            (
                "the original device keeps its properties and gets the restored drive",
                json!({"command_line": ["qemu-system-x86_64", "-blockdev",
                    "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/vm/a.qcow2",
                    "-device", "virtio-blk-pci,drive=disk0,id=vda,bootindex=1,bus=pcie.0"]}),
                vec![disk("vda", "/r/copy-vda.qcow2", "qcow2")],
                vec![
                    "-blockdev",
                    "driver=qcow2,node-name=restored-vda,file.driver=file,file.filename=/r/copy-vda.qcow2",
                    "-device",
                    "virtio-blk-pci,id=vda,drive=restored-vda,bootindex=1,bus=pcie.0",
                ],
            ),
            (
                "JSON -device (as libvirt writes it) and a comma in a path",
                json!({"command_line": ["qemu", "-device",
                    "{\"driver\":\"scsi-hd\",\"bus\":\"scsi0.0\",\"drive\":\"x\",\"id\":\"sda\",\"bootindex\":2}"]}),
                vec![disk("sda", "/r/a,b.raw", "raw")],
                vec![
                    "-blockdev",
                    "driver=raw,node-name=restored-sda,file.driver=file,file.filename=/r/a,,b.raw",
                    "-device",
                    "scsi-hd,id=sda,drive=restored-sda,bootindex=2,bus=scsi0.0",
                ],
            ),
            (
                "no command line (QEMU on another host): a virtio-blk-pci per disk",
                json!({"command_line": null, "block": []}),
                vec![
                    disk("disk0", "/r/d0.raw", "raw"),
                    disk("disk1", "/r/d1.raw", "raw"),
                ],
                vec![
                    "-blockdev",
                    "driver=raw,node-name=restored-disk0,file.driver=file,file.filename=/r/d0.raw",
                    "-device",
                    "virtio-blk-pci,id=disk0,drive=restored-disk0",
                    "-blockdev",
                    "driver=raw,node-name=restored-disk1,file.driver=file,file.filename=/r/d1.raw",
                    "-device",
                    "virtio-blk-pci,id=disk1,drive=restored-disk1",
                ],
            ),
        ];
        for (what, config, disks, expected) in cases {
            let attach = qemu_attach(&config.to_string(), &disks).unwrap();
            assert_eq!(attach.args, expected, "{what}");
            assert_eq!(attach.qmp.len(), 2 * disks.len(), "{what}");
        }
    }

    #[test]
    fn qmp_sequence_adds_the_node_then_the_device() {
        let config =
            json!({"command_line": ["qemu", "-device", "virtio-blk-pci,id=vda,drive=old,,x"]});
        let attach =
            qemu_attach(&config.to_string(), &[disk("vda", "/r/v.qcow2", "qcow2")]).unwrap();
        assert_eq!(
            attach.qmp,
            vec![
                json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
                    "node-name": "restored-vda",
                    "file": {"driver": "file", "filename": "/r/v.qcow2"}}}),
                json!({"execute": "device_add", "arguments": {"driver": "virtio-blk-pci",
                    "id": "vda", "drive": "restored-vda"}}),
            ]
        );
    }

    #[test]
    fn refuses_a_config_that_is_not_the_adapters() {
        for config in ["<domain/>", "[1,2]", ""] {
            assert!(qemu_attach(config, &[]).is_err(), "{config}");
        }
    }
}
