use super::*;

fn disk(target: &str, path: &str, format: &str) -> RestoredDiskFile {
    RestoredDiskFile {
        name: target.into(),
        path: path.into(),
        format: format.into(),
    }
}

/// Rewrites `input` and compares with `expected` ignoring line breaks with their
/// indentation and the quote character of attributes (rewritten elements use `"`).
fn check(input: &str, disks: &[RestoredDiskFile], expected: &str, dropped: &[&str]) {
    let rewritten = rewrite_domain_xml(input, "copy", disks).unwrap();
    let squash = |text: &str| {
        text.split('\n')
            .map(str::trim)
            .collect::<Vec<_>>()
            .concat()
            .replace('"', "'")
    };
    assert_eq!(squash(&rewritten.xml), squash(expected), "input: {input}");
    assert_eq!(rewritten.dropped_disks, dropped);
}

#[test]
fn rewrites_domains_table() {
    // (what, input, restored disks, expected output, dropped disks)
    type Case = (
        &'static str,
        &'static str,
        Vec<RestoredDiskFile>,
        &'static str,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "name, uuid, runtime id, qcow2 disk with backing store and index",
            "<domain type='kvm' id='3'><name>web</name><uuid>4f1c-aa</uuid>
             <devices><disk type='file' device='disk'>
             <driver name='qemu' type='qcow2' cache='none'/>
             <source file='/var/lib/web.qcow2' index='2'/>
             <backingStore type='file' index='1'><format type='raw'/>
             <source file='/var/lib/base.raw'/><backingStore/></backingStore>
             <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
             </devices></domain>",
            vec![disk("vda", "/restore/copy-vda.raw", "raw")],
            "<domain type='kvm'><name>copy</name>
             <devices><disk type='file' device='disk'>
             <driver name='qemu' type='raw' cache='none'/>
             <source file='/restore/copy-vda.raw'/>
             <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
             </devices></domain>",
            &[],
        ),
        (
            "block and network sources become files; a driver is added when missing",
            "<domain><name>db</name><devices>
             <disk type='block' device='disk'><source dev='/dev/vg/db'/>
             <target dev='sda' bus='scsi'/></disk>
             <disk type='network' device='disk'><driver name='qemu' type='raw'/>
             <source protocol='nbd' name='x'><host name='h' port='10809'/></source>
             <target dev='sdb' bus='scsi'/></disk></devices></domain>",
            vec![
                disk("sda", "/r/a.qcow2", "qcow2"),
                disk("sdb", "/r/b.qcow2", "qcow2"),
            ],
            "<domain><name>copy</name><devices>
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
             <source file='/r/a.qcow2'/><target dev='sda' bus='scsi'/></disk>
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
             <source file='/r/b.qcow2'/>
             <target dev='sdb' bus='scsi'/></disk></devices></domain>",
            &[],
        ),
        (
            "MACs go, the rest of an interface stays; CD-ROMs stay; unrestored disks go",
            "<domain><name>a</name><devices>
             <interface type='network'><mac address='52:54:00:12:34:56'/>
             <source network='default'/><model type='virtio'/></interface>
             <disk type='file' device='cdrom'><source file='/iso/x.iso'/>
             <target dev='sdc' bus='sata'/><readonly/></disk>
             <disk type='file' device='disk'><source file='/data.img'/>
             <target dev='vdb' bus='virtio'/></disk>
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>
             <source file='/root.img'/><target dev='vda' bus='virtio'/></disk>
             </devices></domain>",
            vec![disk("vda", "/r/copy-vda.raw", "raw")],
            "<domain><name>copy</name><devices>
             <interface type='network'>
             <source network='default'/><model type='virtio'/></interface>
             <disk type='file' device='cdrom'><source file='/iso/x.iso'/>
             <target dev='sdc' bus='sata'/><readonly/></disk>
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>
             <source file='/r/copy-vda.raw'/><target dev='vda' bus='virtio'/></disk>
             </devices></domain>",
            &["vdb"],
        ),
        (
            "declaration, comments and escaped text survive; paths are escaped",
            "<?xml version='1.0'?>\n<!-- made by hand --><domain><name>a&amp;b</name>
             <description>x &lt; y</description><devices>
             <disk type='file' device='disk'><target dev='vda'/></disk></devices></domain>",
            vec![disk("vda", "/r/it's & <here>.raw", "raw")],
            "<?xml version='1.0'?>\n<!-- made by hand --><domain><name>copy</name>
             <description>x &lt; y</description><devices>
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>
             <source file=\"/r/it&apos;s &amp; &lt;here&gt;.raw\"/>
             <target dev='vda'/></disk></devices></domain>",
            &[],
        ),
        (
            "the UEFI variable store, encryption and a block job's mirror go",
            "<domain><name>a</name><os firmware='efi'><type>hvm</type>
             <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
             <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/nvram/a_VARS.fd</nvram>
             </os><devices><disk type='file' device='disk'>
             <driver name='qemu' type='qcow2'/><source file='/a.qcow2'/>
             <mirror type='file' job='copy'><source file='/b.qcow2'/></mirror>
             <encryption format='luks'><secret type='passphrase' uuid='1-2'/></encryption>
             <target dev='vda'/></disk></devices></domain>",
            vec![disk("vda", "/r/a.qcow2", "qcow2")],
            "<domain><name>copy</name><os firmware='efi'><type>hvm</type>
             <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
             </os><devices><disk type='file' device='disk'>
             <driver name='qemu' type='qcow2'/><source file='/r/a.qcow2'/>
             <target dev='vda'/></disk></devices></domain>",
            &[],
        ),
    ];
    for (what, input, disks, expected, dropped) in cases {
        eprintln!("case: {what}");
        check(input, disks, expected, dropped);
    }
}

#[test]
fn the_new_name_is_escaped() {
    let rewritten = rewrite_domain_xml("<domain><name>a</name></domain>", "x<&>y", &[]).unwrap();
    assert_eq!(
        rewritten.xml,
        "<domain><name>x&lt;&amp;&gt;y</name></domain>"
    );
}

#[test]
fn refuses_what_it_cannot_rewrite() {
    let vda = [disk("vda", "/r/vda.raw", "raw")];
    let cases: &[(&str, &str)] = &[
        ("<domain><name>a</name>", "never closed"),
        ("<domain><name>a</nam></domain>", "cannot be parsed"),
        ("not xml at all", "no root element"),
        (
            "<network><name>a</name></network>",
            "root element is <network>",
        ),
        ("<domain><devices/></domain>", "no <name>"),
        // An unclosed quote swallows the rest of the tag: once rewritten it read back
        // as different markup (found by fuzzing), so it is refused where it is read.
        (
            "<domain type='kvm><name>it's</name><vcpu placement='static'>2</vcpu></domain>",
            "a malformed attribute in <domain>",
        ),
        (
            "<domain><name>a</name><vcpu placement></vcpu></domain>",
            "malformed attribute",
        ),
        (
            "<domain><name>a</name><os a='1' a='2'/></domain>",
            "malformed attribute",
        ),
        (
            "<domain><name>a</name><devices><disk device='disk'><target dev='vdb'/></disk>\
             </devices></domain>",
            "no disk with target dev='vda'",
        ),
    ];
    for (input, message) in cases {
        let error = rewrite_domain_xml(input, "copy", &vda).unwrap_err();
        assert!(
            error.to_string().contains(message),
            "{input}: {error} should say {message}"
        );
    }
}

#[test]
fn refuses_a_document_nested_deeper_than_any_domain() {
    let vda = [disk("vda", "/r/vda.raw", "raw")];
    let nested = |depth: usize| {
        format!(
            "<domain><name>a</name><devices><disk device='disk'><target dev='vda'/></disk>\
             </devices><metadata>{}{}</metadata></domain>",
            "<x>".repeat(depth),
            "</x>".repeat(depth)
        )
    };
    // A million levels used to overflow the stack (writing, then dropping the tree).
    let error = rewrite_domain_xml(&nested(1_000_000), "copy", &vda).unwrap_err();
    assert!(matches!(error, DomainXmlError::TooDeep), "{error}");
    assert_eq!(
        error.to_string(),
        format!("the stored domain XML nests elements more than {MAX_DEPTH} deep")
    );
    // Up to the bound it is rewritten: <domain> and <metadata> are two levels.
    let deepest = nested(MAX_DEPTH - 2);
    assert!(rewrite_domain_xml(&deepest, "copy", &vda).is_ok());
    assert!(matches!(
        rewrite_domain_xml(&nested(MAX_DEPTH - 1), "copy", &vda),
        Err(DomainXmlError::TooDeep)
    ));
}
