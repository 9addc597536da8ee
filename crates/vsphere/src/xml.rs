//! A bounded XML tree of a SOAP reply, and typed reads from it that say what is wrong.
//!
//! vSphere replies are parsed into a small tree of elements (local names, the
//! `xsi:type` and `type` attributes, text) rather than into generated bindings: the
//! client reads a few fields of a few types. The tree is bounded (depth, element count,
//! text size; the body's size is bounded by the caller before parsing), so a hostile or
//! broken server gets an error, never a stack overflow or unbounded memory, and every
//! typed read names the element it expected.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Deepest nesting accepted (vSphere replies nest about 15 deep).
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one reply.
pub const MAX_ELEMENTS: usize = 2_000_000;

/// One element of a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name, without namespace prefix.
    pub name: String,
    /// The `xsi:type` attribute's local part (`VirtualDisk`), if any.
    pub xsi_type: Option<String>,
    /// The `type` attribute (a managed object reference's type), if any.
    pub ref_type: Option<String>,
    /// Child elements, in order.
    pub children: Vec<Element>,
    /// Text content (concatenated, entities resolved).
    pub text: String,
}

/// Why a reply could not be read, for the caller to wrap with the call's name.
pub type XmlResult<T> = std::result::Result<T, String>;

impl Element {
    /// Parses a whole document; its root element.
    pub fn parse(document: &[u8]) -> XmlResult<Element> {
        let mut reader = Reader::from_reader(document);
        let mut stack: Vec<Element> = Vec::new();
        let mut elements = 0usize;
        let mut root = None;
        loop {
            let event = reader.read_event().map_err(|error| {
                format!(
                    "malformed XML at byte {}: {error}",
                    reader.buffer_position()
                )
            })?;
            match event {
                Event::Start(start) | Event::Empty(start) if root.is_some() => {
                    let _ = start;
                    return Err("content after the root element".into());
                }
                Event::Start(start) => {
                    elements += 1;
                    if elements > MAX_ELEMENTS {
                        return Err(format!("more than {MAX_ELEMENTS} elements"));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                    }
                    stack.push(element(&start)?);
                }
                Event::Empty(start) => {
                    elements += 1;
                    if elements > MAX_ELEMENTS {
                        return Err(format!("more than {MAX_ELEMENTS} elements"));
                    }
                    let done = element(&start)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => root = Some(done),
                    }
                }
                Event::End(_) => {
                    let done = stack.pop().ok_or("an end tag without a start")?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => root = Some(done),
                    }
                }
                Event::Text(text) => {
                    if let Some(current) = stack.last_mut() {
                        let text = text
                            .xml10_content()
                            .map_err(|error| format!("undecodable text: {error}"))?;
                        current.text.push_str(&text);
                    }
                }
                Event::CData(data) => {
                    if let Some(current) = stack.last_mut() {
                        let text = data
                            .decode()
                            .map_err(|error| format!("undecodable text: {error}"))?;
                        current.text.push_str(&text);
                    }
                }
                Event::GeneralRef(reference) => {
                    let Some(current) = stack.last_mut() else {
                        continue;
                    };
                    if let Some(ch) = reference
                        .resolve_char_ref()
                        .map_err(|error| format!("bad character reference: {error}"))?
                    {
                        current.text.push(ch);
                        continue;
                    }
                    let name = reference
                        .decode()
                        .map_err(|error| format!("undecodable entity: {error}"))?;
                    let ch = match name.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(format!("unknown entity &{other};")),
                    };
                    current.text.push(ch);
                }
                Event::DocType(_) => return Err("a DOCTYPE (refused: entity expansion)".into()),
                Event::Eof => break,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            }
        }
        if !stack.is_empty() {
            return Err("truncated: the document ends inside an element".into());
        }
        root.ok_or_else(|| "empty document".into())
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    /// Every child named `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The first child named `name`, or an error naming it.
    pub fn require(&self, name: &str) -> XmlResult<&Element> {
        self.child(name)
            .ok_or_else(|| format!("<{}> has no <{name}>", self.name))
    }

    /// The descendant at `path` (child names separated by `/`), or an error naming it.
    pub fn path(&self, path: &str) -> XmlResult<&Element> {
        path.split('/')
            .try_fold(self, |element, name| element.require(name))
    }

    /// The text of child `name`, or an error.
    pub fn text_of(&self, name: &str) -> XmlResult<&str> {
        Ok(self.require(name)?.text.trim())
    }

    /// The text of child `name` as an integer of type `T`, or an error naming it.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> XmlResult<T> {
        let text = self.text_of(name)?;
        text.parse().map_err(|_| {
            format!(
                "<{name}> of <{}> is not a {}: {:?}",
                self.name,
                std::any::type_name::<T>(),
                excerpt(text)
            )
        })
    }

    /// The optional integer child `name`: absent is `None`, malformed an error.
    pub fn optional_number<T: std::str::FromStr>(&self, name: &str) -> XmlResult<Option<T>> {
        match self.child(name) {
            Some(_) => self.number(name).map(Some),
            None => Ok(None),
        }
    }

    /// The optional boolean child `name`: absent is `None`, anything but
    /// `true`/`false`/`1`/`0` an error.
    pub fn optional_bool(&self, name: &str) -> XmlResult<Option<bool>> {
        match self.child(name).map(|child| child.text.trim()) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(format!(
                "<{name}> of <{}> is not a boolean: {:?}",
                self.name,
                excerpt(other)
            )),
        }
    }

    /// The element as a managed object reference: its `type` attribute and its text.
    pub fn moref(&self) -> XmlResult<crate::MoRef> {
        let kind = self
            .ref_type
            .clone()
            .ok_or_else(|| format!("<{}> is not a managed object reference", self.name))?;
        let value = self.text.trim();
        if value.is_empty() {
            return Err(format!(
                "<{}> is an empty managed object reference",
                self.name
            ));
        }
        Ok(crate::MoRef::new(kind, value))
    }
}

/// At most 60 characters of hostile text, for messages.
fn excerpt(text: &str) -> String {
    text.chars().take(60).collect()
}

fn element(start: &BytesStart<'_>) -> XmlResult<Element> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut element = Element {
        name,
        ..Element::default()
    };
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|error| format!("malformed attribute: {error}"))?;
        let key = attribute.key.local_name();
        // A prefixed `type` is the schema-instance type, whatever the prefix (`xsi` from
        // vSphere, `XMLSchema-instance` from Go's encoder); an unprefixed one names a
        // managed object's type.
        let is_xsi = attribute.key.prefix().is_some();
        let value = || {
            attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|value| value.into_owned())
                .map_err(|error| format!("malformed attribute value: {error}"))
        };
        match key.as_ref() {
            b"type" if is_xsi => {
                let value = value()?;
                let local = value.rsplit(':').next().unwrap_or(&value).to_string();
                element.xsi_type = Some(local);
            }
            b"type" => element.ref_type = Some(value()?),
            _ => {}
        }
    }
    Ok(element)
}

/// Escapes text for an XML element or attribute.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_text_and_entities() {
        let root = Element::parse(
            br#"<?xml version="1.0"?><a xmlns:xsi="x"><b xsi:type="xsd:long">42</b><c type="VirtualMachine">vm-1</c><d>x &amp; &#65;<![CDATA[<z>]]></d><e/></a>"#,
        )
        .expect("parses");
        assert_eq!(root.number::<i64>("b"), Ok(42));
        assert_eq!(
            root.require("b").map(|b| b.xsi_type.clone()),
            Ok(Some("long".into()))
        );
        assert_eq!(
            root.require("c").and_then(Element::moref).map(|m| m.value),
            Ok("vm-1".into())
        );
        assert_eq!(root.text_of("d"), Ok("x & A<z>"));
        assert!(root.child("e").is_some());
    }

    #[test]
    fn hostile_documents_are_errors() {
        let truncated = Element::parse(b"<a><b>1</b><c>").unwrap_err();
        assert!(truncated.contains("truncated"), "{truncated}");
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(
            Element::parse(deep.as_bytes())
                .unwrap_err()
                .contains("deeper")
        );
        let doctype = br#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#;
        assert!(Element::parse(doctype).unwrap_err().contains("DOCTYPE"));
        assert!(
            Element::parse(b"<a>&bogus;</a>")
                .unwrap_err()
                .contains("unknown entity")
        );
        assert!(Element::parse(b"<a></b>").is_err());
        assert!(Element::parse(b"").unwrap_err().contains("empty"));
        assert!(
            Element::parse(b"<a/><b/>")
                .unwrap_err()
                .contains("after the root")
        );
        let root = Element::parse(b"<a><n>12x</n><t>maybe</t><m>vm-1</m></a>").expect("parses");
        assert!(root.number::<u64>("n").unwrap_err().contains("not a u64"));
        assert!(
            root.number::<u64>("missing")
                .unwrap_err()
                .contains("has no <missing>")
        );
        assert!(
            root.optional_bool("t")
                .unwrap_err()
                .contains("not a boolean")
        );
        assert!(root.require("m").and_then(Element::moref).is_err());
    }
}
