import Foundation
import KVMExits
import KVMResources

/// libvirt as a source beside /proc: opened once (`-c/--connect URI`, else qemu:///system when a libvirt
/// daemon listens on its socket), read at every sample; a failure is one stderr line each time it changes, and the
/// VMs simply have no libvirt section then (never old numbers shown as new).
/// Not thread-safe: one owner at a time (`serve` keeps it under a lock, hence `@unchecked Sendable`).
final class LibvirtReader: @unchecked Sendable {
    let connection: LibvirtConnection
    private var lastProblem: String?

    init(connection: LibvirtConnection) { self.connection = connection }

    /// - Parameter uri: the `--connect` value: nil for the default, `none` for no libvirt.
    /// - Throws: `KVMScopeError.io` when a URI given on the command line cannot be opened; without one, a
    ///   daemon that does not answer is a warning and kvmscope goes on with /proc only.
    static func open(_ uri: String?) throws -> LibvirtReader? {
        if uri == "none" { return nil }
        if let uri {
            do { return LibvirtReader(connection: try LibvirtConnection(uri: uri)) } catch {
                throw KVMScopeError.io("\(error)")
            }
        }
        guard LibvirtConnection.daemonListening else { return nil }
        do { return LibvirtReader(connection: try LibvirtConnection()) } catch {
            writeStderr("kvmscope: warning: \(error); showing /proc only (-c URI names another libvirt)\n")
            return nil
        }
    }

    /// The last sample's libvirt readings, by VM pid (for the devices' deltas).
    private var previous: [Int32: QMPSample] = [:]

    func attach(to sample: inout ResourceSample) {
        do {
            sample.attach(libvirt: try connection.domains())
            sample.fillQMP(fromLibvirt: connection.uri, previous: previous)
            previous = [:]
            for vm in sample.vms where vm.libvirt != nil { if let q = vm.qmp, q.socket.hasPrefix("libvirt:") { previous[vm.pid] = q } }
            if lastProblem != nil { writeStderr("kvmscope: libvirt at \(connection.uri) answers again\n") }
            lastProblem = nil
        } catch {
            let problem = "\(error)"
            if problem != lastProblem { writeStderr("kvmscope: warning: \(problem)\n") }
            lastProblem = problem
        }
    }
}
