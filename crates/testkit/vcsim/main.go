// Command vcsim runs govmomi's vCenter simulator for Haven's tests, on 127.0.0.1 over
// TLS, with what the simulator lacks for a backup tool:
//
//   - every VM's disks get a raw "-flat.vmdk" of -disk-mib MiB beside their descriptor
//     (as ESXi keeps them), which the tests write real data into; -disks N gives every
//     VM N disks (disk1.vmdk … diskN.vmdk on its first disk's controller);
//   - -tools-running makes every VM report VMware Tools running, so backups ask for
//     quiesced snapshots; a quiesced snapshot of a VM without them is refused with
//     ToolsUnavailable, as ESXi does. Every CreateSnapshot_Task request (VM, name,
//     quiesce) is appended as a JSON line to the file -snapshot-log names;
//   - QueryChangedDiskAreas, answered from the flat files themselves: when a snapshot is
//     taken of a VM with change tracking on, each disk gets a new changeId and the
//     hash of every 64 KiB block of its flat file is kept under it; the areas changed
//     since changeId C for snapshot S are the blocks whose hashes differ between C and
//     S's changeId. "*" returns the blocks that are not all zeros; an unknown changeId
//     is a SOAP fault, as on ESXi after change tracking was reset.
//
// Replies cover at most 8 MiB of the disk each, so clients must page through
// startOffset as they must with ESXi.
//
// Both are served by a front HTTPS server of our own in front of the simulator's
// handler (which gets every other request unchanged): the simulator's extension point,
// wrapping its VM objects in its registry, breaks its own type assertions on
// *VirtualMachine (snapshots, container views). The front does not check the session
// cookie for QueryChangedDiskAreas.
//
// Once serving it writes a JSON description of itself (URL, credentials, datastore
// folders, VM names) to the file -info names (written aside and renamed, so a reader
// never sees half of it), and serves until SIGTERM or SIGINT. Datastore folders are
// made under $TMPDIR, which the test points at a folder it removes.
//
// Built with Debian's packages only: GO111MODULE=off GOPATH=/usr/share/gocode go build.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	blockSize   = 64 << 10
	replyWindow = 8 << 20
)

// blockState is a disk's content at one changeId: a hash per block.
type blockState struct {
	size   int64
	hashes [][32]byte
	zero   []bool
}

// tracker holds every changeId handed out and which changeId each snapshot's disks carry.
type tracker struct {
	sync.Mutex
	next      int
	states    map[string]*blockState
	snapshots map[string]map[int32]string
	dsDirs    map[string]string
}

var cbt = &tracker{
	states:    map[string]*blockState{},
	snapshots: map[string]map[int32]string{},
	dsDirs:    map[string]string{},
}

// flatPath maps a disk's "[DS] dir/name.vmdk" to the local path of its -flat.vmdk.
func flatPath(fileName string) (string, error) {
	var p struct{ ds, rel string }
	if !strings.HasPrefix(fileName, "[") {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	end := strings.Index(fileName, "]")
	if end < 0 {
		return "", fmt.Errorf("not a datastore path: %q", fileName)
	}
	p.ds = fileName[1:end]
	p.rel = strings.TrimSpace(fileName[end+1:])
	dir, ok := cbt.dsDirs[p.ds]
	if !ok {
		return "", fmt.Errorf("unknown datastore %q", p.ds)
	}
	return filepath.Join(dir, strings.TrimSuffix(p.rel, ".vmdk")+"-flat.vmdk"), nil
}

func scan(file string) (*blockState, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	state := &blockState{}
	buf := make([]byte, blockSize)
	zeros := make([]byte, blockSize)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			state.size += int64(n)
			state.hashes = append(state.hashes, sha256.Sum256(buf[:n]))
			state.zero = append(state.zero, bytes.Equal(buf[:n], zeros[:n]))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return state, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func disks(vm *simulator.VirtualMachine) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, device := range vm.Config.Hardware.Device {
		if disk, ok := device.(*types.VirtualDisk); ok {
			out = append(out, disk)
		}
	}
	return out
}

func backing(disk *types.VirtualDisk) *types.VirtualDiskFlatVer2BackingInfo {
	b, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	return b
}

// soapRequest is the part of a SOAP request the extension reads.
type soapRequest struct {
	Body struct {
		Query *struct {
			This        string `xml:"_this"`
			Snapshot    string `xml:"snapshot"`
			DeviceKey   int32  `xml:"deviceKey"`
			StartOffset int64  `xml:"startOffset"`
			ChangeId    string `xml:"changeId"`
		} `xml:"QueryChangedDiskAreas"`
		Snapshot *struct {
			This    string `xml:"_this"`
			Name    string `xml:"name"`
			Quiesce bool   `xml:"quiesce"`
		} `xml:"CreateSnapshot_Task"`
	} `xml:"Body"`
}

// extend serves QueryChangedDiskAreas itself and gives disks new changeIds before the
// simulator takes a snapshot; everything else goes to the simulator unchanged. (The
// simulator's own extension point, wrapping its objects in the registry, breaks its
// type assertions on VirtualMachine.)
func extend(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/sdk") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req soapRequest
		_ = xml.Unmarshal(body, &req)
		if q := req.Body.Query; q != nil {
			queryChangedDiskAreas(w, q.Snapshot, q.DeviceKey, q.StartOffset, q.ChangeId)
			return
		}
		var vm *simulator.VirtualMachine
		ids := map[int32]string{}
		if c := req.Body.Snapshot; c != nil {
			ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: strings.TrimSpace(c.This)}
			vm, _ = simulator.Map.Get(ref).(*simulator.VirtualMachine)
			if vm != nil {
				logSnapshot(vm.Name, c.Name, c.Quiesce)
				if c.Quiesce && !*toolsRunning {
					soapFault(w, "VMware Tools are not running: cannot quiesce", "ToolsUnavailable", "")
					return
				}
				var fault error
				simulator.Map.WithLock(vm, func() { ids, fault = newChangeIds(vm) })
				if fault != nil {
					soapFault(w, fault.Error(), "FileFault", "")
					return
				}
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
		if vm != nil {
			simulator.Map.WithLock(vm, func() {
				if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
					cbt.Lock()
					cbt.snapshots[vm.Snapshot.CurrentSnapshot.Value] = ids
					cbt.Unlock()
				}
			})
		}
	})
}

// newChangeIds gives each disk of a VM with change tracking on a new changeId holding
// its blocks now.
func newChangeIds(vm *simulator.VirtualMachine) (map[int32]string, error) {
	ids := map[int32]string{}
	if vm.Config.ChangeTrackingEnabled == nil || !*vm.Config.ChangeTrackingEnabled {
		return ids, nil
	}
	cbt.Lock()
	defer cbt.Unlock()
	for _, disk := range disks(vm) {
		b := backing(disk)
		if b == nil {
			continue
		}
		file, err := flatPath(b.FileName)
		if err != nil {
			return nil, err
		}
		started := time.Now()
		state, err := scan(file)
		if err != nil {
			return nil, err
		}
		// bench/vsphere.sh subtracts this (ESXi's tracking costs nothing at snapshot time).
		log.Printf("scan %s: %d bytes in %.3f s", file, state.size, time.Since(started).Seconds())
		cbt.next++
		id := fmt.Sprintf("52 %02x %02x 8e 61 5f 3a c4-b7 %04x/%d", disk.Key&0xff, cbt.next&0xff, cbt.next, cbt.next)
		cbt.states[id] = state
		ids[disk.Key] = id
		b.ChangeId = id
	}
	return ids, nil
}

// logSnapshot appends one snapshot request to -snapshot-log.
func logSnapshot(vm, name string, quiesce bool) {
	if *snapshotLog == "" {
		return
	}
	line, _ := json.Marshal(map[string]interface{}{"vm": vm, "name": name, "quiesce": quiesce})
	f, err := os.OpenFile(*snapshotLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		log.Printf("snapshot log: %v", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// addDisks gives vm disks 2…count, copies of its first disk on the same controller
// with their own key, unit number and descriptor (diskN.vmdk beside the first one).
func addDisks(vm *simulator.VirtualMachine, count int) {
	existing := disks(vm)
	if len(existing) == 0 || count <= len(existing) {
		return
	}
	first := existing[0]
	firstBacking := backing(first)
	if firstBacking == nil || first.UnitNumber == nil {
		return
	}
	dir := firstBacking.FileName[:strings.LastIndex(firstBacking.FileName, "/")+1]
	for i := len(existing) + 1; i <= count; i++ {
		disk := *first
		b := *firstBacking
		b.FileName = fmt.Sprintf("%sdisk%d.vmdk", dir, i)
		b.Uuid = fmt.Sprintf("%s-%d", firstBacking.Uuid, i)
		disk.Backing = &b
		disk.Key = first.Key + int32(i-1)
		unit := *first.UnitNumber + int32(i-1)
		disk.UnitNumber = &unit
		disk.DeviceInfo = &types.Description{Label: fmt.Sprintf("Hard disk %d", i), Summary: ""}
		vm.Config.Hardware.Device = append(vm.Config.Hardware.Device, &disk)
	}
}

func soapFault(w http.ResponseWriter, msg, fault, property string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	var detail strings.Builder
	_ = xml.EscapeText(&detail, []byte(msg))
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s"><invalidProperty>%s</invalidProperty></%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		detail.String(), fault, fault, property, fault)
}

// queryChangedDiskAreas answers from the block hashes kept per changeId.
func queryChangedDiskAreas(w http.ResponseWriter, snapshot string, deviceKey int32, startOffset int64, changeId string) {
	cbt.Lock()
	defer cbt.Unlock()
	ids, ok := cbt.snapshots[strings.TrimSpace(snapshot)]
	if !ok {
		soapFault(w, "no such snapshot", "ManagedObjectNotFound", "")
		return
	}
	id, ok := ids[deviceKey]
	if !ok {
		soapFault(w, "change tracking was off for this disk at the snapshot", "FileFault", "")
		return
	}
	now := cbt.states[id]
	if startOffset < 0 || startOffset > now.size {
		soapFault(w, "startOffset out of range", "InvalidArgument", "startOffset")
		return
	}
	var then *blockState
	if changeId != "*" {
		then, ok = cbt.states[changeId]
		if !ok {
			soapFault(w, "unknown changeId", "InvalidArgument", "changeId")
			return
		}
	}
	end := startOffset + replyWindow
	if end > now.size {
		end = now.size
	}
	var areas strings.Builder
	var areaStart, areaLength int64 = -1, 0
	flush := func() {
		if areaStart >= 0 {
			fmt.Fprintf(&areas, "<changedArea><start>%d</start><length>%d</length></changedArea>", areaStart, areaLength)
		}
		areaStart, areaLength = -1, 0
	}
	for block := startOffset / blockSize; block*blockSize < end; block++ {
		var changed bool
		if then == nil {
			changed = !now.zero[block]
		} else {
			changed = block >= int64(len(then.hashes)) || then.hashes[block] != now.hashes[block]
		}
		if !changed {
			flush()
			continue
		}
		start := block * blockSize
		length := int64(blockSize)
		if start+length > now.size {
			length = now.size - start
		}
		if areaStart < 0 {
			areaStart = start
		}
		areaLength = start + length - areaStart
	}
	flush()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`,
		startOffset, end-startOffset, areas.String())
}

// certificates makes a CA and a certificate for 127.0.0.1 it signs (ECDSA P-256:
// httptest's built-in certificate has an RSA key too weak for rustls and OpenSSL), and
// writes the CA's PEM to caFile.
func certificates(caFile string) (tls.Certificate, error) {
	key := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	caKey, err := key()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vcsim test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	leafKey, err := key()
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	pemCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(caFile, pemCA, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}, nil
}

var (
	toolsRunning = flag.Bool("tools-running", false, "every VM reports VMware Tools running")
	snapshotLog  = flag.String("snapshot-log", "", "file each CreateSnapshot_Task request is appended to (JSON lines)")
)

func main() {
	diskMiB := flag.Int64("disk-mib", 16, "size of every VM disk in MiB")
	diskCount := flag.Int("disks", 1, "disks per VM")
	infoFile := flag.String("info", "", "where to write the JSON description once serving")
	caFile := flag.String("ca-file", "", "where to write the PEM of the CA that signed the server's certificate")
	flag.Parse()
	if *caFile == "" || *infoFile == "" {
		log.Fatal("-ca-file and -info are required")
	}
	cert, err := certificates(*caFile)
	if err != nil {
		log.Fatal(err)
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword("haven", "vsphere-secret")}

	for _, entity := range simulator.Map.All("Datastore") {
		ds := entity.(*simulator.Datastore)
		cbt.dsDirs[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	var vms []string
	for _, entity := range simulator.Map.All("VirtualMachine") {
		vm := entity.(*simulator.VirtualMachine)
		addDisks(vm, *diskCount)
		if *toolsRunning && vm.Guest != nil {
			vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		}
		for _, disk := range disks(vm) {
			disk.CapacityInKB = *diskMiB << 10
			disk.CapacityInBytes = *diskMiB << 20
			b := backing(disk)
			if b == nil {
				continue
			}
			file, err := flatPath(b.FileName)
			if err != nil {
				log.Fatal(err)
			}
			if err := os.MkdirAll(path.Dir(file), 0o700); err != nil {
				log.Fatal(err)
			}
			if err := os.WriteFile(file, nil, 0o600); err != nil {
				log.Fatal(err)
			}
			if err := os.Truncate(file, *diskMiB<<20); err != nil {
				log.Fatal(err)
			}
		}
		vms = append(vms, vm.Name)
	}

	server := model.Service.NewServer()
	defer server.Close()
	// A front server of our own, with the extension in front of the simulator's handler.
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	front := &http.Server{
		Handler:   extend(server.Config.Handler),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	go func() { _ = front.ServeTLS(listener, "", "") }()
	sdk := *server.URL
	sdk.User = nil
	sdk.Host = listener.Addr().String()
	info := map[string]interface{}{
		"url":        sdk.String(),
		"ca_file":    *caFile,
		"user":       "haven",
		"password":   "vsphere-secret",
		"datastores": cbt.dsDirs,
		"vms":        vms,
	}
	line, _ := json.Marshal(info)
	if err := os.WriteFile(*infoFile+".partial", line, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(*infoFile+".partial", *infoFile); err != nil {
		log.Fatal(err)
	}

	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
