//! Seed corpora, made of real encoded objects where Haven has an encoder: the NBD
//! exchange of Haven's own client and server (recorded through a proxy), blobs, key
//! files, manifests and indexes from `haven-repo`'s encoders, batch records from
//! `haven-node-protocol`'s, the compose files' configurations, and documents in the
//! shapes QEMU, libvirt and vSphere answer with.
//!
//! `HAVEN_FUZZ_WRITE_SEEDS=DIR fuzz/target/.../TARGET` writes `DIR/TARGET/seed-N` and
//! exits instead of fuzzing (`scripts/fuzz.sh seeds` does it for every target); the
//! committed corpora under `fuzz/corpus/` were made that way.

use std::path::Path;

use bytes::Bytes;
use haven_node_protocol::{ObjectInfo, PullKey, PullOutcome, PullRequest, Record};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::{nbd_client_session, nbd_serve, runtime};

/// The libFuzzer `init` of every target: writes the target's seeds and exits when
/// `HAVEN_FUZZ_WRITE_SEEDS` names a folder, else does nothing.
pub fn write_if_asked(target: &str) {
    let Some(folder) = std::env::var_os("HAVEN_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let folder = Path::new(&folder).join(target);
    std::fs::create_dir_all(&folder).expect("the seed folder");
    for (number, seed) in seeds(target).iter().enumerate() {
        std::fs::write(folder.join(format!("seed-{number}")), seed).expect("a seed");
    }
    std::process::exit(0);
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "nbd_client" => vec![record_nbd().1],
        "nbd_server" => vec![record_nbd().0],
        "qmp" => vec![qmp_transcript()],
        "config_coordinator" => texts(&[
            include_str!("../../deploy/compose/coordinator-1.toml"),
            include_str!("../../deploy/compose/coordinator-dr.toml"),
        ]),
        "config_worker" => texts(&[
            include_str!("../../deploy/compose/worker.toml"),
            include_str!("../../deploy/compose/worker-dr.toml"),
        ]),
        "config_policy" => texts(&[
            include_str!("../../deploy/compose/policy.toml"),
            include_str!("../../deploy/compose/policy-dr.toml"),
        ]),
        "cron" => texts(&[
            "0 2 * * *",
            "*/15 * * * 1-5",
            "30 1 1,15 * 0",
            "0 0 29 2 *",
            "5-55/10 8-18/2 * 1-6,9-12 7",
        ]),
        "node_batch" => vec![batch_stream()],
        "node_pull" => pull_documents(),
        "node_object" => haven_storage_node::fuzzing::object_file_seeds(),
        "s3_key" => texts(&[
            "chunks/ab/abcdef0123456789",
            "snapshots/vm-1/2026-12-06T00:00:00Z",
            "a//b/",
            "../..",
            "dir/",
            "ünïcode key with spaces%2F",
        ]),
        "partition" => vec![mbr_disk(), gpt_disk()],
        "libvirt_xml" => texts(&[DOMAIN_XML, VIRSH_DOMBLKLIST, VIRSH_BACKUP_XML]),
        "vsphere_soap" => vsphere_replies(),
        "vhdx_chain" => vhdx_chains(),
        repo => haven_repo::fuzzing::seeds(repo),
    }
}

fn texts(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|text| text.as_bytes().to_vec()).collect()
}

/// The bytes each side sent when Haven's NBD client ran its session against Haven's
/// NBD server: `(client to server, server to client)`.
fn record_nbd() -> (Vec<u8>, Vec<u8>) {
    runtime().block_on(async {
        let folder = std::env::temp_dir().join(format!("haven-fuzz-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("a folder");
        let socket = folder.join("nbd");
        let listener = UnixListener::bind(&socket).expect("a socket");
        let proxy = async {
            let (stream, _) = listener.accept().await.expect("the client");
            let (near, far) = tokio::io::duplex(1 << 20);
            let (mut client_reader, mut client_writer) = stream.into_split();
            let (mut server_reader, mut server_writer) = tokio::io::split(near);
            let ((), up, down) = tokio::join!(
                nbd_serve(far),
                relay(&mut client_reader, &mut server_writer),
                relay(&mut server_reader, &mut client_writer),
            );
            (up, down)
        };
        let ((), recorded) = tokio::join!(nbd_client_session(&socket), proxy);
        let _ = std::fs::remove_dir_all(&folder);
        recorded
    })
}

/// Copies `from` into `to` until the end, and returns what passed.
async fn relay(from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) -> Vec<u8> {
    let mut passed = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while let Ok(read) = from.read(&mut buf).await {
        if read == 0 || to.write_all(&buf[..read]).await.is_err() {
            break;
        }
        passed.extend_from_slice(&buf[..read]);
    }
    let _ = to.shutdown().await;
    passed
}

/// A QEMU monitor's side of the target's session: greeting, capabilities, an event,
/// the block graph, the devices and a refusal.
fn qmp_transcript() -> Vec<u8> {
    [
        r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}}"#,
        r#"{"return": {}, "id": "haven-1"}"#,
        r#"{"timestamp": {"seconds": 1765000000, "microseconds": 1}, "event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "haven-job"}}"#,
        r#"{"return": [{"iops_rd": 0, "detect_zeroes": "off", "image": {"virtual-size": 10737418240, "filename": "/var/lib/vm/a.qcow2", "format": "qcow2", "actual-size": 200704, "dirty-flag": false}, "node-name": "fmt0", "drv": "qcow2", "ro": false, "encrypted": false, "file": "/var/lib/vm/a.qcow2", "dirty-bitmaps": [{"name": "haven-1", "recording": true, "persistent": true, "busy": false, "granularity": 65536, "count": 0}]}, {"node-name": "file0", "drv": "file", "ro": false, "file": "/var/lib/vm/a.qcow2", "image": {"virtual-size": 200704}}], "id": "haven-2"}"#,
        r#"{"return": [{"device": "", "qdev": "/machine/peripheral/vda/virtio-backend", "locked": false, "removable": false, "inserted": {"node-name": "fmt0", "drv": "qcow2", "ro": false, "file": "/var/lib/vm/a.qcow2"}, "type": "unknown"}], "id": "haven-3"}"#,
        r#"{"error": {"class": "GenericError", "desc": "Parameter 'job-id' is missing"}, "id": "haven-4"}"#,
        "",
    ]
    .join("\n")
    .into_bytes()
}

/// A batch stream as a node answers a batch read: an object, a missing key, an empty
/// object and a failed one.
fn batch_stream() -> Vec<u8> {
    let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    let object = |key: &str, data: &[u8]| Record::Object {
        key: key.into(),
        info: ObjectInfo {
            size: data.len() as u64,
            etag: "0123456789abcdef".into(),
            content_type: Some("application/octet-stream".into()),
            crc32: crc32fast::hash(data),
        },
    };
    let mut stream = vec![31u8];
    let records: [(Record, &[u8]); 4] = [
        (object("chunks/aa/1", &data), &data),
        (Record::Missing { key: "gone".into() }, b""),
        (object("empty", b""), b""),
        (
            Record::Failed {
                key: "bad".into(),
                message: "block 0 fails its CRC".into(),
            },
            b"",
        ),
    ];
    for (record, data) in records {
        let header: Bytes = record.encode().expect("a record");
        stream.extend_from_slice(&header);
        stream.extend_from_slice(data);
    }
    stream
}

fn pull_documents() -> Vec<Vec<u8>> {
    let request = PullRequest {
        url: "http://127.0.0.1:9000/primary?haven-batch-get=".into(),
        headers: vec![
            ("host".into(), "127.0.0.1:9000".into()),
            ("x-amz-date".into(), "20261206T000000Z".into()),
            ("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()),
            ("authorization".into(), "AWS4-HMAC-SHA256 Credential=a/20261206/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00".into()),
        ],
        keys: vec![PullKey {
            source: "site-a/chunks/aa/1".into(),
            target: "site-b/chunks/aa/1".into(),
        }],
    };
    let outcomes = vec![
        PullOutcome::Created,
        PullOutcome::Existed,
        PullOutcome::Missing,
        PullOutcome::Failed {
            message: "bad block".into(),
        },
    ];
    vec![
        serde_json::to_vec(&request).expect("encodes"),
        serde_json::to_vec(&outcomes).expect("encodes"),
        b"1\n0\n1\n".to_vec(),
    ]
}

/// A 64 KiB disk with an MBR: a Linux partition and an extended one.
fn mbr_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 64 * 1024];
    for (index, (kind, first, sectors)) in [(0x83u8, 2u32, 60u32), (0x05, 62, 60)]
        .into_iter()
        .enumerate()
    {
        let entry = &mut disk[446 + 16 * index..446 + 16 * (index + 1)];
        entry[4] = kind;
        entry[8..12].copy_from_slice(&first.to_le_bytes());
        entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    }
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

/// A 64 KiB disk with a protective MBR and a GPT of two named partitions.
fn gpt_disk() -> Vec<u8> {
    let mut disk = mbr_disk();
    disk[446..510].fill(0);
    disk[446 + 4] = 0xEE;
    disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    disk[446 + 12..446 + 16].copy_from_slice(&127u32.to_le_bytes());
    let header = &mut disk[512..1024];
    header[0..8].copy_from_slice(b"EFI PART");
    header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    header[12..16].copy_from_slice(&92u32.to_le_bytes());
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    header[32..40].copy_from_slice(&127u64.to_le_bytes());
    header[40..48].copy_from_slice(&34u64.to_le_bytes());
    header[48..56].copy_from_slice(&94u64.to_le_bytes());
    header[72..80].copy_from_slice(&2u64.to_le_bytes());
    header[80..84].copy_from_slice(&4u32.to_le_bytes());
    header[84..88].copy_from_slice(&128u32.to_le_bytes());
    // Linux file system data, then an EFI system partition.
    let types: [[u8; 16]; 2] = [
        [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ],
        [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ],
    ];
    for (index, (kind, first, last, name)) in [
        (types[0], 34u64, 60u64, "root"),
        (types[1], 61, 94, "EFI system"),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = &mut disk[1024 + 128 * index..1024 + 128 * (index + 1)];
        entry[0..16].copy_from_slice(&kind);
        entry[16] = index as u8 + 1;
        entry[32..40].copy_from_slice(&first.to_le_bytes());
        entry[40..48].copy_from_slice(&last.to_le_bytes());
        for (unit, character) in name.encode_utf16().enumerate() {
            entry[56 + 2 * unit..58 + 2 * unit].copy_from_slice(&character.to_le_bytes());
        }
    }
    disk
}

const DOMAIN_XML: &str = r#"<domain type='kvm' id='7'>
  <name>web-1</name>
  <uuid>5f0c6d4e-8a47-4a36-9a59-0b2f4c8a1e11</uuid>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/web-1_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <!-- kept as it is -->
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2' index='2'/>
      <backingStore type='file' index='3'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/base.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"#;

const VIRSH_DOMBLKLIST: &str = " Type   Device   Target   Source
-----------------------------------------------------------
 file   disk     vda      /var/lib/libvirt/images/web 1.qcow2
 block  disk     vdb      /dev/vg0/data
 file   cdrom    sda      -

Capacity:       10737418240
Allocation:     200704
Physical:       200704
";

const VIRSH_BACKUP_XML: &str = "<domainbackup mode='pull'>
  <server transport='unix' socket='/run/haven/haven-libvirt-web-1-4f2a/nbd.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='haven-1' exportname='vda' exportbitmap='backup-vda'>
      <driver type='qcow2'/>
      <scratch file='/run/haven/haven-libvirt-web-1-4f2a/vda.scratch'/>
    </disk>
  </disks>
</domainbackup>
";

fn envelope(body: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soapenv:Envelope xmlns:soapenc=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
    .into_bytes()
}

fn vsphere_replies() -> Vec<Vec<u8>> {
    let vm = r#"<RetrievePropertiesResponse xmlns="urn:vim25"><returnval><obj type="VirtualMachine">vm-42</obj><propSet><name>name</name><val xsi:type="xsd:string">web-1</val></propSet><propSet><name>config.uuid</name><val xsi:type="xsd:string">4213a0a1-1111-2222-3333-444455556666</val></propSet><propSet><name>config.changeTrackingEnabled</name><val xsi:type="xsd:boolean">true</val></propSet><propSet><name>config.hardware</name><val xsi:type="VirtualHardware"><numCPU>2</numCPU><numCoresPerSocket>1</numCoresPerSocket><memoryMB>2048</memoryMB><device xsi:type="ParaVirtualSCSIController"><key>1000</key><deviceInfo><label>SCSI controller 0</label><summary>VMware paravirtual SCSI</summary></deviceInfo><busNumber>0</busNumber></device><device xsi:type="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label><summary>10,485,760 KB</summary></deviceInfo><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[datastore1] web-1/web-1.vmdk</fileName><diskMode>persistent</diskMode><changeId>52 de 1c 7f 36 3a 0e 3b-5a 6b 1a 3b 4d 28 6e 2f/12</changeId></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>10485760</capacityInKB><capacityInBytes>10737418240</capacityInBytes></device><device xsi:type="VirtualVmxnet3"><key>4000</key><deviceInfo><label>Network adapter 1</label><summary>VM Network</summary></deviceInfo><macAddress>00:50:56:ab:cd:ef</macAddress></device></val></propSet><propSet><name>snapshot</name><val xsi:type="VirtualMachineSnapshotInfo"><currentSnapshot type="VirtualMachineSnapshot">snapshot-7</currentSnapshot><rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-7</snapshot><vm type="VirtualMachine">vm-42</vm><name>haven-1</name><childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-8</snapshot><name>haven-2</name></childSnapshotList></rootSnapshotList></val></propSet></returnval></RetrievePropertiesResponse>"#;
    let areas = r#"<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>0</startOffset><length>10737418240</length><changedArea><start>0</start><length>65536</length></changedArea><changedArea><start>1048576</start><length>2097152</length></changedArea></returnval></QueryChangedDiskAreasResponse>"#;
    let task = r#"<CreateSnapshot_TaskResponse xmlns="urn:vim25"><returnval type="Task">task-12</returnval></CreateSnapshot_TaskResponse>"#;
    let fault = r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>A specified parameter was not correct: changeId</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault>"#;
    [vm, areas, task, fault]
        .iter()
        .map(|body| envelope(body))
        .collect()
}

/// A dynamic VHDX made by `qemu-img`, alone and under a checkpoint made by the tests'
/// writer of differencing VHDX files (`cli/tests/it/support/avhdx.py`) with two blocks
/// written in part (a sector bitmap; a whole block would make a 1 MiB seed), in the
/// target's sparse records
/// (`haven_worker::fuzzing::vhdx_chain`).
fn vhdx_chains() -> Vec<Vec<u8>> {
    let folder = std::env::temp_dir().join(format!("haven-fuzz-vhdx-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("a scratch folder");
    let path = |name: &str| folder.join(name).display().to_string();
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .expect("qemu-img and python3 (scripts/install-deps.sh)");
        assert!(status.success(), "{program} {args:?} failed");
    };
    run(
        "qemu-img",
        &["create", "-q", "-f", "vhdx", &path("base.vhdx"), "8M"],
    );
    std::fs::write(path("first"), vec![0x5a; 4096]).expect("a write");
    std::fs::write(path("part"), vec![0xa5; 1536]).expect("a write");
    let writer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cli/tests/it/support/avhdx.py"
    );
    run(
        "python3",
        &[
            writer,
            &path("base.vhdx"),
            &path("child.avhdx"),
            "--junk",
            "0",
            "--write",
            &format!("0={}", path("first")),
            "--write",
            &format!("{}={}", (3 << 20) + 512, path("part")),
        ],
    );
    let base = std::fs::read(path("base.vhdx")).expect("the base");
    let child = std::fs::read(path("child.avhdx")).expect("the checkpoint");
    std::fs::remove_dir_all(&folder).expect("the scratch folder removed");
    vec![
        sparse_records(&[(0, &base)]),
        sparse_records(&[(0, &child), (1, &base)]),
    ]
}

/// Files as the `vhdx_chain` target's records (`[file][offset u32][length u16][bytes]`):
/// runs of non-zero 512-byte sectors, zeros left out.
fn sparse_records(files: &[(u8, &[u8])]) -> Vec<u8> {
    let mut records = Vec::new();
    for &(file, bytes) in files {
        let sectors: Vec<&[u8]> = bytes.chunks(512).collect();
        let mut number = 0;
        while number < sectors.len() {
            if sectors[number].iter().all(|&b| b == 0) {
                number += 1;
                continue;
            }
            let start = number;
            while number < sectors.len()
                && number - start < 127
                && sectors[number].iter().any(|&b| b != 0)
            {
                number += 1;
            }
            let data: Vec<u8> = sectors[start..number].concat();
            records.push(file);
            records.extend_from_slice(
                &(u32::try_from(start * 512).expect("a small file")).to_le_bytes(),
            );
            records.extend_from_slice(&(data.len() as u16).to_le_bytes());
            records.extend_from_slice(&data);
        }
    }
    records
}
