//! A vSphere session over SOAP: the calls a backup makes, and reads of datastore files.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderValue, RANGE, SET_COOKIE};

use crate::error::{Result, VsphereError};
use crate::model::{self, Area, MoRef, SnapshotEntry, VirtualDisk, VmInfo, VmSummary};
use crate::xml::{Element, XmlResult, escape};

/// The longest Haven waits for one vSphere task (snapshot creation or removal,
/// reconfiguration); removing a snapshot with large deltas can take long, a task that
/// never ends must not hang a backup. A snapshot left behind is removed by the next run.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest SOAP reply accepted; a VM inventory of thousands fits in a few MiB.
pub const MAX_REPLY_BYTES: usize = 32 << 20;
/// Most `QueryChangedDiskAreas` replies one disk may take (each must advance).
const MAX_CHANGE_PAGES: usize = 1 << 20;
/// Most parents between a VM and its datacenter.
const MAX_INVENTORY_DEPTH: usize = 64;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The SDK endpoint, `https://HOST/sdk`.
    pub url: String,
    /// Who to log in as.
    pub credentials: crate::Credentials,
    /// PEM file of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// The service's well-known objects.
#[derive(Debug, Clone)]
struct ServiceContent {
    root_folder: MoRef,
    property_collector: MoRef,
    session_manager: MoRef,
    view_manager: MoRef,
}

/// A logged-in session.
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    cookie: Mutex<Option<HeaderValue>>,
    content: ServiceContent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl Client {
    /// Connects, verifying the server's certificate, and logs in.
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        let url = reqwest::Url::parse(&options.url).map_err(|error| {
            VsphereError::InvalidInput(format!("vSphere URL {:?}: {error}", options.url))
        })?;
        if url.scheme() != "https" {
            return Err(VsphereError::InvalidInput(format!(
                "vSphere URL {:?} must be https://HOST/sdk",
                options.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &options.ca_file {
            let ca_error = |reason: String| VsphereError::CaFile {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no certificate in it".into()));
            }
            builder = builder.tls_certs_only(certificates);
        }
        let http = builder.build().map_err(|source| VsphereError::Http {
            call: "TLS setup".into(),
            source,
        })?;
        let mut client = Self {
            http,
            url,
            cookie: Mutex::new(None),
            content: ServiceContent {
                root_folder: MoRef::new("", ""),
                property_collector: MoRef::new("", ""),
                session_manager: MoRef::new("", ""),
                view_manager: MoRef::new("", ""),
            },
        };
        let reply = client
            .call(
                "RetrieveServiceContent",
                MoRef::new("ServiceInstance", "ServiceInstance").to_xml("_this"),
            )
            .await?;
        let call = "RetrieveServiceContent";
        let content = reply
            .require("returnval")
            .and_then(|content| {
                let moref = |name: &str| content.require(name).and_then(Element::moref);
                Ok(ServiceContent {
                    root_folder: moref("rootFolder")?,
                    property_collector: moref("propertyCollector")?,
                    session_manager: moref("sessionManager")?,
                    view_manager: moref("viewManager")?,
                })
            })
            .map_err(|reason| VsphereError::reply(call, reason))?;
        client.content = content;
        client
            .call(
                "Login",
                format!(
                    "{}<userName>{}</userName><password>{}</password>",
                    client.content.session_manager.to_xml("_this"),
                    escape(&options.credentials.user),
                    escape(&options.credentials.password)
                ),
            )
            .await?;
        Ok(client)
    }

    /// Ends the session.
    pub async fn logout(&self) -> Result<()> {
        self.call("Logout", self.content.session_manager.to_xml("_this"))
            .await
            .map(drop)
    }

    /// The VM named `name` (exactly one must have that name).
    pub async fn find_vm(&self, name: &str) -> Result<MoRef> {
        let matches: Vec<MoRef> = self
            .every_vm(&["name"])
            .await?
            .into_iter()
            .filter(|object| {
                object
                    .get("name")
                    .is_some_and(|value| value.text.trim() == name)
            })
            .map(|object| object.obj)
            .collect();
        match matches.as_slice() {
            [vm] => Ok(vm.clone()),
            [] => Err(VsphereError::NotFound(format!("no VM named {name:?}"))),
            many => Err(VsphereError::InvalidInput(format!(
                "{} VMs are named {name:?}",
                many.len()
            ))),
        }
    }

    /// Every VM with its disks, for a worker's inventory; VMs without a configuration
    /// (inaccessible, being created) are left out.
    pub async fn inventory(&self) -> Result<Vec<VmSummary>> {
        let call = "RetrieveProperties (inventory)";
        let mut vms = Vec::new();
        for object in self.every_vm(&["name", "config.hardware"]).await? {
            let (Some(name), Some(hardware)) = (object.get("name"), object.get("config.hardware"))
            else {
                continue;
            };
            let devices: Vec<&Element> = hardware.children("device").collect();
            vms.push(VmSummary {
                vm: object.obj.clone(),
                name: name.text.trim().to_string(),
                disks: model::disks(&devices)
                    .map_err(|reason| VsphereError::reply(call, reason))?,
            });
        }
        Ok(vms)
    }

    /// Properties `paths` of every VM, through a container view of the whole inventory.
    async fn every_vm(&self, paths: &[&str]) -> Result<Vec<ObjectContent>> {
        let view = self
            .call(
                "CreateContainerView",
                format!(
                    "{}{}<type>VirtualMachine</type><recursive>true</recursive>",
                    self.content.view_manager.to_xml("_this"),
                    self.content.root_folder.to_xml("container")
                ),
            )
            .await?
            .require("returnval")
            .and_then(Element::moref)
            .map_err(|reason| VsphereError::reply("CreateContainerView", reason))?;
        let found = self
            .retrieve(
                "VirtualMachine",
                paths,
                &format!(
                    "<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
                    view.to_xml("obj")
                ),
            )
            .await;
        let destroyed = self
            .call("DestroyView", view.to_xml("_this"))
            .await
            .map(drop);
        let found = found?;
        destroyed?;
        Ok(found)
    }

    /// The VM's hardware, change-tracking state and snapshots.
    pub async fn vm_info(&self, vm: &MoRef) -> Result<VmInfo> {
        let call = "RetrieveProperties (VM)";
        let object = self
            .retrieve_one(
                vm,
                &[
                    "name",
                    "config.uuid",
                    "config.guestId",
                    "config.hardware",
                    "config.firmware",
                    "config.changeTrackingEnabled",
                    "guest.toolsRunningStatus",
                    "snapshot",
                ],
            )
            .await?;
        vm_info_of(vm, &object).map_err(|reason| VsphereError::reply(call, reason))
    }

    /// The name of the datacenter holding `entity`, found through its parents.
    pub async fn datacenter_of(&self, entity: &MoRef) -> Result<String> {
        let mut current = entity.clone();
        for _ in 0..MAX_INVENTORY_DEPTH {
            let object = self.retrieve_one(&current, &["parent", "name"]).await?;
            if current.kind == "Datacenter" {
                return object
                    .get("name")
                    .map(|name| name.text.trim().to_string())
                    .ok_or_else(|| {
                        VsphereError::reply("RetrieveProperties", "the datacenter has no name")
                    });
            }
            current = object
                .get("parent")
                .ok_or_else(|| {
                    VsphereError::NotFound(format!("{} is in no datacenter", entity.value))
                })?
                .moref()
                .map_err(|reason| VsphereError::reply("RetrieveProperties", reason))?;
        }
        Err(VsphereError::reply(
            "RetrieveProperties",
            format!("no datacenter within {MAX_INVENTORY_DEPTH} parents"),
        ))
    }

    /// Turns changed block tracking on (it takes effect at the next snapshot).
    pub async fn enable_change_tracking(&self, vm: &MoRef) -> Result<()> {
        let task = self
            .task_call(
                "ReconfigVM_Task",
                format!(
                    "{}<spec><changeTrackingEnabled>true</changeTrackingEnabled></spec>",
                    vm.to_xml("_this")
                ),
            )
            .await?;
        self.wait(&task, "ReconfigVM_Task").await.map(drop)
    }

    /// Takes a snapshot without memory; quiesced through VMware Tools if asked.
    pub async fn create_snapshot(
        &self,
        vm: &MoRef,
        name: &str,
        description: &str,
        quiesce: bool,
    ) -> Result<MoRef> {
        let task = self
            .task_call(
                "CreateSnapshot_Task",
                format!(
                    "{}<name>{}</name><description>{}</description><memory>false</memory><quiesce>{quiesce}</quiesce>",
                    vm.to_xml("_this"),
                    escape(name),
                    escape(description)
                ),
            )
            .await?;
        let result = self.wait(&task, "CreateSnapshot_Task").await?;
        result
            .ok_or_else(|| {
                VsphereError::reply("CreateSnapshot_Task", "the task returned no snapshot")
            })?
            .moref()
            .map_err(|reason| VsphereError::reply("CreateSnapshot_Task", reason))
    }

    /// Removes a snapshot (its children stay), consolidating its disks.
    pub async fn remove_snapshot(&self, snapshot: &MoRef) -> Result<()> {
        let task = self
            .task_call(
                "RemoveSnapshot_Task",
                format!(
                    "{}<removeChildren>false</removeChildren><consolidate>true</consolidate>",
                    snapshot.to_xml("_this")
                ),
            )
            .await?;
        self.wait(&task, "RemoveSnapshot_Task").await.map(drop)
    }

    /// The disks as the snapshot holds them (their changeIds are the snapshot's).
    pub async fn snapshot_disks(&self, snapshot: &MoRef) -> Result<Vec<VirtualDisk>> {
        let object = self
            .retrieve_one(snapshot, &["config.hardware.device"])
            .await?;
        model::disks(&snapshot_devices(&object))
            .map_err(|reason| VsphereError::reply("RetrieveProperties (snapshot)", reason))
    }

    /// The areas of disk `device_key` that changed between `change_id` and `snapshot`
    /// (`"*"`: every allocated area), over the disk's `capacity` bytes, in order.
    pub async fn changed_areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        device_key: i32,
        change_id: &str,
        capacity: u64,
    ) -> Result<Vec<Area>> {
        let call = "QueryChangedDiskAreas";
        let mut areas: Vec<Area> = Vec::new();
        let mut offset = 0u64;
        for _ in 0..MAX_CHANGE_PAGES {
            if offset >= capacity {
                return Ok(areas);
            }
            let reply = self
                .call(
                    call,
                    format!(
                        "{}{}<deviceKey>{device_key}</deviceKey><startOffset>{offset}</startOffset><changeId>{}</changeId>",
                        vm.to_xml("_this"),
                        snapshot.to_xml("snapshot"),
                        escape(change_id)
                    ),
                )
                .await?;
            offset = changed_page(&reply, offset, capacity, &mut areas)
                .map_err(|reason| VsphereError::reply(call, reason))?;
        }
        Err(VsphereError::reply(call, "too many replies for one disk"))
    }

    /// Removes every snapshot `is_leftover` picks (snapshots a killed run left).
    pub async fn remove_snapshots(
        &self,
        snapshots: &[SnapshotEntry],
        is_leftover: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in snapshots.iter().filter(|entry| is_leftover(&entry.name)) {
            self.remove_snapshot(&entry.snapshot).await?;
            removed.push(entry.name.clone());
        }
        Ok(removed)
    }

    /// A datastore file's URL: `https://HOST/folder/PATH?dcPath=DC&dsName=DS`.
    pub fn datastore_url(
        &self,
        datacenter: &str,
        datastore: &str,
        path: &str,
    ) -> Result<reqwest::Url> {
        let mut url = self.url.clone();
        url.set_query(None);
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                VsphereError::InvalidInput(format!("vSphere URL {} cannot hold a path", self.url))
            })?;
            segments.clear().push("folder");
            for segment in path.split('/').filter(|segment| !segment.is_empty()) {
                segments.push(segment);
            }
        }
        url.query_pairs_mut()
            .append_pair("dcPath", datacenter)
            .append_pair("dsName", datastore);
        Ok(url)
    }

    /// Fills `buf` with the bytes of the file at `url` from `offset` (one ranged GET).
    pub async fn read_range(&self, url: &reqwest::Url, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let call = || format!("GET {}", url.path());
        let last = offset + buf.len() as u64 - 1;
        let mut request = self
            .http
            .get(url.clone())
            .header(RANGE, format!("bytes={offset}-{last}"));
        if let Some(cookie) = self.cookie() {
            request = request.header(COOKIE, cookie);
        }
        let mut response = request.send().await.map_err(|source| VsphereError::Http {
            call: call(),
            source,
        })?;
        match response.status().as_u16() {
            206 => {}
            416 => {
                return Err(VsphereError::reply(
                    &call(),
                    format!("bytes {offset}..={last} are past the end of the file"),
                ));
            }
            200 => {
                return Err(VsphereError::reply(
                    &call(),
                    "the server ignored the byte range",
                ));
            }
            status => {
                return Err(VsphereError::Status {
                    call: call(),
                    status,
                });
            }
        }
        let mut filled = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| VsphereError::Http {
                call: call(),
                source,
            })?
        {
            let end = filled + chunk.len();
            if end > buf.len() {
                return Err(VsphereError::reply(
                    &call(),
                    "more bytes than the range asked for",
                ));
            }
            buf[filled..end].copy_from_slice(&chunk);
            filled = end;
        }
        if filled != buf.len() {
            return Err(VsphereError::reply(
                &call(),
                format!("{filled} bytes instead of {}: truncated", buf.len()),
            ));
        }
        Ok(())
    }

    /// Properties `paths` of one object.
    async fn retrieve_one(&self, object: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let mut objects = self
            .retrieve(
                &object.kind,
                paths,
                &format!("<objectSet>{}</objectSet>", object.to_xml("obj")),
            )
            .await?;
        match objects.len() {
            1 => Ok(objects.remove(0)),
            0 => Err(VsphereError::NotFound(format!(
                "{} {} does not exist",
                object.kind, object.value
            ))),
            n => Err(VsphereError::reply(
                "RetrieveProperties",
                format!("{n} objects for one"),
            )),
        }
    }

    /// `RetrieveProperties` of `paths` on objects of type `kind` that `object_set` reaches.
    async fn retrieve(
        &self,
        kind: &str,
        paths: &[&str],
        object_set: &str,
    ) -> Result<Vec<ObjectContent>> {
        let call = "RetrieveProperties";
        let path_set: String = paths
            .iter()
            .map(|path| format!("<pathSet>{}</pathSet>", escape(path)))
            .collect();
        let reply = self
            .call(
                call,
                format!(
                    "{}<specSet><propSet><type>{}</type>{path_set}</propSet>{object_set}</specSet>",
                    self.content.property_collector.to_xml("_this"),
                    escape(kind)
                ),
            )
            .await?;
        object_contents(&reply).map_err(|reason| VsphereError::reply(call, reason))
    }

    /// Starts a task; its reference.
    async fn task_call(&self, method: &str, body: String) -> Result<MoRef> {
        self.call(method, body)
            .await?
            .require("returnval")
            .and_then(Element::moref)
            .map_err(|reason| VsphereError::reply(method, reason))
    }

    /// Waits for a task to end, at most [`TASK_TIMEOUT`]; its result, or its fault as
    /// an error. A task that never ends must not hold a backup (or the snapshot removal
    /// after it) forever.
    async fn wait(&self, task: &MoRef, name: &str) -> Result<Option<Element>> {
        let mut pause = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + TASK_TIMEOUT;
        loop {
            let info = self.retrieve_one(task, &["info"]).await?;
            let info = info
                .get("info")
                .ok_or_else(|| VsphereError::reply(name, "the task has no info"))?;
            let state = info
                .text_of("state")
                .map_err(|reason| VsphereError::reply(name, reason))?;
            match state {
                "success" => return Ok(info.child("result").cloned()),
                "error" => {
                    let error = info.child("error");
                    let fault = error
                        .and_then(|error| error.child("fault"))
                        .and_then(|fault| fault.xsi_type.clone())
                        .unwrap_or_else(|| "unknown fault".into());
                    let message = error
                        .and_then(|error| error.child("localizedMessage"))
                        .map(|message| message.text.trim().to_string())
                        .unwrap_or_default();
                    return Err(VsphereError::Task {
                        task: name.to_string(),
                        fault,
                        message,
                    });
                }
                "queued" | "running" if tokio::time::Instant::now() >= deadline => {
                    return Err(VsphereError::TaskTimeout {
                        task: name.to_string(),
                        after: TASK_TIMEOUT,
                    });
                }
                "queued" | "running" => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => {
                    return Err(VsphereError::reply(
                        name,
                        format!(
                            "unknown task state {:?}",
                            other.chars().take(40).collect::<String>()
                        ),
                    ));
                }
            }
        }
    }

    fn cookie(&self) -> Option<HeaderValue> {
        self.cookie
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Calls `method` with `body` (its parameters, `_this` first); the response element.
    pub(crate) async fn call(&self, method: &str, body: String) -> Result<Element> {
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><{method} xmlns=\"urn:vim25\">{body}</{method}></soapenv:Body></soapenv:Envelope>"
        );
        let mut request = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(envelope);
        if let Some(cookie) = self.cookie() {
            request = request.header(COOKIE, cookie);
        }
        let http_error = |source| VsphereError::Http {
            call: method.to_string(),
            source,
        };
        let mut response = request.send().await.map_err(http_error)?;
        if let Some(cookie) = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find(|value| value.starts_with("vmware_soap_session="))
            .and_then(|value| value.split(';').next())
            .and_then(|pair| HeaderValue::from_str(pair).ok())
        {
            *self
                .cookie
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cookie);
        }
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            append_bounded(method, &mut body, &chunk)?;
        }
        parse_reply(method, status, &body)
    }
}

/// Adds a received piece of `method`'s reply to `body`, refusing a reply larger than
/// [`MAX_REPLY_BYTES`] before holding it (a hostile or broken server cannot make the
/// client buffer without end).
fn append_bounded(method: &str, body: &mut Vec<u8>, chunk: &[u8]) -> Result<()> {
    if body.len() + chunk.len() > MAX_REPLY_BYTES {
        return Err(VsphereError::reply(
            method,
            format!("larger than {} MiB", MAX_REPLY_BYTES >> 20),
        ));
    }
    body.extend_from_slice(chunk);
    Ok(())
}

/// A SOAP reply's response element, or its fault as an error. Faults come with HTTP 500.
pub(crate) fn parse_reply(method: &str, status: u16, body: &[u8]) -> Result<Element> {
    let not_soap = || {
        if status == 200 {
            None
        } else {
            Some(VsphereError::Status {
                call: method.to_string(),
                status,
            })
        }
    };
    let envelope = match Element::parse(body) {
        Ok(envelope) => envelope,
        Err(reason) => {
            return Err(not_soap().unwrap_or_else(|| VsphereError::reply(method, reason)));
        }
    };
    let Some(soap_body) = envelope
        .child("Body")
        .filter(|_| envelope.name == "Envelope")
    else {
        return Err(
            not_soap().unwrap_or_else(|| VsphereError::reply(method, "not a SOAP envelope"))
        );
    };
    if let Some(fault) = soap_body.child("Fault") {
        let detail = fault
            .child("detail")
            .and_then(|detail| detail.children.first());
        let kind = detail
            .and_then(|detail| {
                detail
                    .xsi_type
                    .clone()
                    .or_else(|| Some(detail.name.trim_end_matches("Fault").to_string()))
            })
            .unwrap_or_else(|| "SOAP fault".into());
        let message: String = fault
            .child("faultstring")
            .map(|text| text.text.trim().chars().take(500).collect())
            .unwrap_or_default();
        return Err(VsphereError::Fault {
            call: method.to_string(),
            fault: kind,
            message,
        });
    }
    if let Some(error) = not_soap() {
        return Err(error);
    }
    let expected = format!("{method}Response");
    soap_body
        .children
        .iter()
        .find(|child| child.name == expected)
        .cloned()
        .ok_or_else(|| VsphereError::reply(method, format!("no <{expected}> in the reply")))
}

/// The objects of a `RetrieveProperties` reply.
pub(crate) fn object_contents(reply: &Element) -> XmlResult<Vec<ObjectContent>> {
    reply
        .children("returnval")
        .map(|object| {
            let obj = object.require("obj").and_then(Element::moref)?;
            let properties = object
                .children("propSet")
                .map(|property| {
                    Ok((
                        property.text_of("name")?.to_string(),
                        property.require("val")?.clone(),
                    ))
                })
                .collect::<XmlResult<Vec<_>>>()?;
            Ok(ObjectContent { obj, properties })
        })
        .collect()
}

/// A VM's description from the properties [`Client::vm_info`] retrieves.
pub(crate) fn vm_info_of(vm: &MoRef, object: &ObjectContent) -> XmlResult<VmInfo> {
    let text = |key: &str| object.get(key).map(|value| value.text.trim().to_string());
    let hardware = object
        .get("config.hardware")
        .ok_or("the VM has no config.hardware")?;
    let devices: Vec<&Element> = hardware.children("device").collect();
    let mut snapshots = Vec::new();
    if let Some(info) = object.get("snapshot") {
        let roots: Vec<&Element> = info.children("rootSnapshotList").collect();
        model::snapshot_tree(&roots, &mut snapshots)?;
    }
    Ok(VmInfo {
        vm: vm.clone(),
        name: text("name").ok_or("the VM has no name")?,
        uuid: text("config.uuid"),
        guest_id: text("config.guestId"),
        cpus: hardware.number("numCPU")?,
        memory_mib: hardware.number("memoryMB")?,
        firmware: text("config.firmware"),
        disks: model::disks(&devices)?,
        nics: model::nics(&devices),
        change_tracking: text("config.changeTrackingEnabled").as_deref() == Some("true"),
        tools_running: text("guest.toolsRunningStatus").as_deref() == Some("guestToolsRunning"),
        snapshots,
    })
}

/// The devices of a snapshot's `config.hardware.device` property.
pub(crate) fn snapshot_devices(object: &ObjectContent) -> Vec<&Element> {
    object
        .properties
        .iter()
        .filter(|(key, _)| key == "config.hardware.device")
        .flat_map(|(_, value)| {
            if value.name == "val" {
                value.children.iter().collect::<Vec<_>>()
            } else {
                vec![value]
            }
        })
        .collect()
}

/// One `QueryChangedDiskAreas` reply asked from byte `offset` of a `capacity`-byte
/// disk: its areas are appended to `areas` (they must lie in the reply's range, after
/// the areas before, in order); the byte the next reply starts from.
pub(crate) fn changed_page(
    reply: &Element,
    offset: u64,
    capacity: u64,
    areas: &mut Vec<Area>,
) -> XmlResult<u64> {
    let info = reply.require("returnval")?;
    let start = info.number::<u64>("startOffset")?;
    let length = info.number::<u64>("length")?;
    let end = start
        .checked_add(length)
        .filter(|end| start == offset && *end > offset && *end <= capacity)
        .ok_or_else(|| {
            format!("asked from byte {offset}, got {length} bytes from {start} of a {capacity}-byte disk")
        })?;
    for area in info.children("changedArea") {
        let area = Area {
            start: area.number("start")?,
            length: area.number("length")?,
        };
        let area_end = area.start.checked_add(area.length);
        let previous_end = areas.last().map_or(0, |last| last.start + last.length);
        if area.length == 0
            || area.start < start.max(previous_end)
            || area_end.is_none_or(|area_end| area_end > end)
        {
            return Err(format!(
                "changed area of {} bytes at {} is outside bytes {start}..{end} or out of order",
                area.length, area.start
            ));
        }
        areas.push(area);
    }
    Ok(end)
}

/// The properties of one object in a `RetrieveProperties` reply.
pub(crate) struct ObjectContent {
    obj: MoRef,
    properties: Vec<(String, Element)>,
}

impl ObjectContent {
    pub(crate) fn get(&self, name: &str) -> Option<&Element> {
        self.properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &str = "<soapenv:Envelope xmlns:soapenv=\"s\" xmlns:xsi=\"i\"><soapenv:Body>";

    fn reply(body: &str) -> Vec<u8> {
        format!("{ENVELOPE}{body}</soapenv:Body></soapenv:Envelope>").into_bytes()
    }

    #[test]
    fn faults_are_typed_errors() {
        let body = reply(
            "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>unknown changeId</faultstring><detail><InvalidArgumentFault xsi:type=\"InvalidArgument\"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault>",
        );
        let error = parse_reply("QueryChangedDiskAreas", 500, &body).unwrap_err();
        assert!(error.is_fault("InvalidArgument"), "{error}");
        assert_eq!(
            error.to_string(),
            "QueryChangedDiskAreas refused: InvalidArgument: unknown changeId"
        );
    }

    #[test]
    fn replies_over_the_cap_are_refused_before_they_are_held() {
        let mut body = Vec::new();
        let piece = vec![b' '; 1 << 20];
        for _ in 0..(MAX_REPLY_BYTES >> 20) {
            append_bounded("RetrieveProperties", &mut body, &piece).unwrap();
        }
        assert_eq!(body.len(), MAX_REPLY_BYTES);
        let error = append_bounded("RetrieveProperties", &mut body, b"x").unwrap_err();
        assert_eq!(
            error.to_string(),
            "RetrieveProperties: unusable reply: larger than 32 MiB"
        );
        assert_eq!(
            body.len(),
            MAX_REPLY_BYTES,
            "the piece over the cap is not kept"
        );
    }

    #[test]
    fn hostile_replies_are_clear_errors() {
        let truncated = &reply("<LoginResponse><returnval>")[..60];
        let error = parse_reply("Login", 200, truncated).unwrap_err();
        assert!(matches!(error, VsphereError::Reply { .. }), "{error}");
        let error = parse_reply("Login", 502, b"<html>bad gateway").unwrap_err();
        assert!(
            matches!(error, VsphereError::Status { status: 502, .. }),
            "{error}"
        );
        let error = parse_reply("Login", 200, &reply("<LogoutResponse/>")).unwrap_err();
        assert!(error.to_string().contains("no <LoginResponse>"), "{error}");
        let error = parse_reply("Login", 200, b"<a/>").unwrap_err();
        assert!(error.to_string().contains("not a SOAP envelope"), "{error}");
        let ok = parse_reply(
            "Login",
            200,
            &reply("<LoginResponse><returnval/></LoginResponse>"),
        );
        assert!(ok.is_ok());
    }
}
