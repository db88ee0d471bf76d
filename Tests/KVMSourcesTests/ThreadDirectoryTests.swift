import Foundation
import KVMHost
import Testing

/// What /proc says about the processes that cause kvm events.
struct ThreadDirectoryTests {
    /// kthreadd (pid 2) is the kernel thread every other one descends from; this test is a user process.
    @Test func kernelThreadsAreToldApart() {
        #expect(ThreadDirectory.isKernelThread(2))
        #expect(!ThreadDirectory.isKernelThread(getpid()))
        #expect(!ThreadDirectory.isKernelThread(1))
        #expect(!ThreadDirectory.isKernelThread(Int32.max))  // no such process
    }
}
