import CLibev

@testable import IOLoop

/// An armed libev read watcher on a descriptor that never becomes readable: the "idle fd" of the
/// embedding and poll tests, independent of the socket classes.
final class IdleReadable {
    let io: IOService
    let watcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)

    init(_ io: IOService, fd: Int32) {
        self.io = io
        ioloop_ev_io_init(watcher, { _, _, _ in }, fd, Int32(EV_READ))
        io.start(watcher)
    }

    func stop() {
        io.stop(watcher)
    }

    deinit { watcher.deallocate() }
}
