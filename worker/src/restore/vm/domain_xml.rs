//! Rewriting a stored libvirt domain XML so it can be defined next to the original: a
//! new name, no UUID and no MAC addresses (libvirt generates new ones), and every
//! restored disk pointing at its restored file without backing chain.
//!
//! The document is parsed into a small tree with `quick-xml`, edited, and written back;
//! everything the rewrite does not touch (comments, unknown elements, attributes) is
//! kept as it was.

use std::collections::BTreeMap;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer, XmlVersion};

use super::RestoredDiskFile;

/// The rewritten document and what was left out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenDomain {
    /// The domain XML to define.
    pub xml: String,
    /// Targets of `device='disk'` disks the snapshot has no data for: removed, so the
    /// new domain never shares a writable disk with the original.
    pub dropped_disks: Vec<String>,
}

/// Why a domain XML cannot be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    /// Not well-formed XML.
    #[error("the stored domain XML cannot be parsed: {0}")]
    Parse(String),
    /// Well-formed, but not a libvirt domain.
    #[error("the stored domain XML is not a libvirt domain: {0}")]
    NotADomain(String),
    /// A restored disk has no `<disk>` with its target in the XML.
    #[error("the stored domain XML has no disk with target dev='{0}'")]
    MissingDisk(String),
    /// Elements nested deeper than [`MAX_DEPTH`]: no libvirt domain is, and the tree
    /// is written and dropped recursively, so such a document would overflow the stack.
    #[error("the stored domain XML nests elements more than {MAX_DEPTH} deep")]
    TooDeep,
}

/// How deep elements may nest in a domain XML. libvirt's own documents go about ten
/// levels deep (`<domain><devices><disk><source><host>`...); a stored document is
/// outside input, and the tree below is written and dropped recursively.
pub const MAX_DEPTH: usize = 256;

/// A parsed XML node: an element with its children, or any other event kept verbatim.
#[derive(Debug, Clone)]
enum Node {
    Element(Element),
    Other(Event<'static>),
}

#[derive(Debug, Clone)]
struct Element {
    start: BytesStart<'static>,
    children: Vec<Node>,
    /// Written as `<x/>` when it still has no children.
    empty: bool,
}

impl Element {
    fn new_empty(name: &str, attributes: &[(&str, &str)]) -> Self {
        let mut start = BytesStart::new(name.to_string());
        for &attribute in attributes {
            start.push_attribute(attribute);
        }
        Self {
            start,
            children: Vec::new(),
            empty: true,
        }
    }

    fn name(&self) -> String {
        String::from_utf8_lossy(self.start.name().as_ref()).into_owned()
    }

    /// This element's attributes. Every one parsed when the document was read
    /// ([`check_attributes`]), so none is skipped here.
    fn attributes(&self) -> impl Iterator<Item = Attribute<'_>> {
        self.start.attributes().flatten()
    }

    fn attribute(&self, key: &str) -> Option<String> {
        self.attributes()
            .find(|attribute| attribute.key.as_ref() == key.as_bytes())
            .and_then(|attribute| {
                attribute
                    .normalized_value(XmlVersion::Implicit1_0)
                    .ok()
                    .map(|value| value.into_owned())
            })
    }

    /// Sets (or with `None` removes) one attribute, keeping the others in order.
    fn set_attribute(&mut self, key: &str, value: Option<&str>) {
        let name = self.name();
        let mut start = BytesStart::new(name);
        let mut replaced = false;
        for attribute in self.attributes() {
            if attribute.key.as_ref() == key.as_bytes() {
                if let (Some(value), false) = (value, replaced) {
                    start.push_attribute((key, value));
                    replaced = true;
                }
                continue;
            }
            // The raw value is already escaped, except for a `"` that sat inside single
            // quotes: the attribute is written back between double quotes.
            let mut raw = Vec::with_capacity(attribute.value.len());
            for &byte in attribute.value.iter() {
                match byte {
                    b'"' => raw.extend_from_slice(b"&quot;"),
                    other => raw.push(other),
                }
            }
            start.push_attribute((attribute.key.as_ref(), raw.as_slice()));
        }
        if let (Some(value), false) = (value, replaced) {
            start.push_attribute((key, value));
        }
        self.start = start;
    }

    fn child_elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            Node::Other(_) => None,
        })
    }

    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|node| match node {
            Node::Element(element) if element.name() == name => Some(element),
            _ => None,
        })
    }

    /// Removes the child elements called `name`.
    fn remove_children(&mut self, name: &str) {
        self.children
            .retain(|node| !matches!(node, Node::Element(element) if element.name() == name));
    }

    fn set_text(&mut self, text: &str) {
        self.children = vec![Node::Other(Event::Text(BytesText::new(text).into_owned()))];
        self.empty = false;
    }
}

/// Rewrites `xml` for a domain called `new_name` whose disks are `disks`.
///
/// `<name>` becomes `new_name`; `<uuid>`, the root's runtime `id`, the UEFI
/// `<os><nvram>` (libvirt makes a fresh variable store: boot entries are not in the
/// snapshot) and every interface's `<mac>` go; each `<disk>` whose `<target dev>` is
/// restored becomes a `type='file'` disk with `<source file=…/>`, `<driver type=…/>`
/// and no `<backingStore>`, `<encryption>` or `<mirror>`; other `device='disk'`/`'lun'` disks are dropped (reported) so the
/// copy never writes to the original's storage. CD-ROMs and floppies stay as they are.
pub fn rewrite_domain_xml(
    xml: &str,
    new_name: &str,
    disks: &[RestoredDiskFile],
) -> Result<RewrittenDomain, DomainXmlError> {
    let mut nodes = parse(xml)?;
    let mut domains = nodes.iter_mut().filter_map(|node| match node {
        Node::Element(element) => Some(element),
        Node::Other(_) => None,
    });
    let domain = domains
        .next()
        .ok_or_else(|| DomainXmlError::NotADomain("no root element".into()))?;
    if domain.name() != "domain" {
        return Err(DomainXmlError::NotADomain(format!(
            "the root element is <{}>",
            domain.name()
        )));
    }
    domain.set_attribute("id", None);
    domain.remove_children("uuid");
    // A UEFI domain's variable store belongs to the original: without `<nvram>`,
    // libvirt creates a fresh one for the new name from the firmware's template.
    for os in domain
        .child_elements_mut()
        .filter(|child| child.name() == "os")
    {
        os.remove_children("nvram");
    }
    match domain
        .child_elements_mut()
        .find(|child| child.name() == "name")
    {
        Some(name) => name.set_text(new_name),
        None => return Err(DomainXmlError::NotADomain("no <name>".into())),
    }

    let wanted: BTreeMap<&str, &RestoredDiskFile> = disks
        .iter()
        .map(|disk| (disk.name.as_str(), disk))
        .collect();
    let mut found = Vec::new();
    let mut dropped_disks = Vec::new();
    for devices in domain
        .child_elements_mut()
        .filter(|child| child.name() == "devices")
    {
        let mut kept = Vec::with_capacity(devices.children.len());
        for node in std::mem::take(&mut devices.children) {
            let Node::Element(mut element) = node else {
                kept.push(node);
                continue;
            };
            match element.name().as_str() {
                "disk" => {
                    let target = element
                        .child("target")
                        .and_then(|target| target.attribute("dev"));
                    let restored = target.as_deref().and_then(|dev| wanted.get(dev));
                    if let Some(restored) = restored {
                        point_disk_at(&mut element, restored);
                        found.push(restored.name.clone());
                    } else if matches!(
                        element.attribute("device").as_deref(),
                        None | Some("disk") | Some("lun")
                    ) {
                        dropped_disks.push(target.unwrap_or_default());
                        continue;
                    }
                }
                "interface" => element.remove_children("mac"),
                _ => {}
            }
            kept.push(Node::Element(element));
        }
        devices.children = kept;
    }
    for disk in disks {
        if !found.contains(&disk.name) {
            return Err(DomainXmlError::MissingDisk(disk.name.clone()));
        }
    }
    let xml = write(&nodes)?;
    Ok(RewrittenDomain { xml, dropped_disks })
}

/// Makes one `<disk>` a plain file disk backed by the restored image.
fn point_disk_at(disk: &mut Element, restored: &RestoredDiskFile) {
    disk.set_attribute("type", Some("file"));
    disk.remove_children("source");
    // The restored image is a plain, unencrypted file with no block job on it.
    for child in ["backingStore", "encryption", "mirror"] {
        disk.remove_children(child);
    }
    let source = Node::Element(Element::new_empty(
        "source",
        &[("file", restored.path.as_str())],
    ));
    let driver_at = disk
        .children
        .iter()
        .position(|node| matches!(node, Node::Element(element) if element.name() == "driver"));
    match driver_at {
        Some(at) => {
            if let Node::Element(driver) = &mut disk.children[at] {
                driver.set_attribute("type", Some(&restored.format));
            }
            disk.children.insert(at + 1, source);
        }
        None => {
            let driver = Element::new_empty(
                "driver",
                &[("name", "qemu"), ("type", restored.format.as_str())],
            );
            disk.children.insert(0, source);
            disk.children.insert(0, Node::Element(driver));
        }
    }
    disk.empty = false;
}

fn parse(xml: &str) -> Result<Vec<Node>, DomainXmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut roots = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|error| {
                DomainXmlError::Parse(format!("{error} at byte {}", reader.error_position()))
            })?
            .into_owned();
        let node = match event {
            Event::Eof => break,
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(DomainXmlError::TooDeep);
                }
                check_attributes(&start, &reader)?;
                stack.push(Element {
                    start,
                    children: Vec::new(),
                    empty: false,
                });
                continue;
            }
            Event::End(_) => match stack.pop() {
                Some(element) => Node::Element(element),
                None => return Err(DomainXmlError::Parse("unbalanced end tag".into())),
            },
            Event::Empty(start) => {
                check_attributes(&start, &reader)?;
                Node::Element(Element {
                    start,
                    children: Vec::new(),
                    empty: true,
                })
            }
            other => Node::Other(other),
        };
        match stack.last_mut() {
            Some(parent) => parent.children.push(node),
            None => roots.push(node),
        }
    }
    if let Some(open) = stack.last() {
        return Err(DomainXmlError::Parse(format!(
            "<{}> is never closed",
            open.name()
        )));
    }
    Ok(roots)
}

/// Refuses a start tag whose attributes do not parse (an unclosed quote, a name with no
/// value, a repeated name). The reader hands the tag over as raw bytes and checks
/// attributes only when asked; the edits below read and rewrite them, so a malformed
/// one must stop the rewrite here instead of coming out as different markup.
fn check_attributes(start: &BytesStart<'_>, reader: &Reader<&[u8]>) -> Result<(), DomainXmlError> {
    for attribute in start.attributes() {
        if let Err(error) = attribute {
            return Err(DomainXmlError::Parse(format!(
                "a malformed attribute in <{}>: {error} (tag ending at byte {})",
                String::from_utf8_lossy(start.name().as_ref()),
                reader.buffer_position()
            )));
        }
    }
    Ok(())
}

fn write(nodes: &[Node]) -> Result<String, DomainXmlError> {
    let mut writer = Writer::new(Vec::new());
    write_nodes(&mut writer, nodes)
        .map_err(|error| DomainXmlError::Parse(format!("cannot write the XML: {error}")))?;
    String::from_utf8(writer.into_inner())
        .map_err(|error| DomainXmlError::Parse(format!("the XML is not UTF-8: {error}")))
}

fn write_nodes(writer: &mut Writer<Vec<u8>>, nodes: &[Node]) -> std::io::Result<()> {
    for node in nodes {
        match node {
            Node::Other(event) => writer.write_event(event.borrow())?,
            Node::Element(element) if element.empty && element.children.is_empty() => {
                writer.write_event(Event::Empty(element.start.borrow()))?
            }
            Node::Element(element) => {
                writer.write_event(Event::Start(element.start.borrow()))?;
                write_nodes(writer, &element.children)?;
                let name = element.name();
                writer.write_event(Event::End(BytesEnd::new(name)))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "domain_xml_tests.rs"]
mod tests;
