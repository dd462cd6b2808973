import CLibev
import Glibc

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

/// Completes once when `fd` becomes readable, through the service's queue (like a read operation).
final class ReadableOnce {
    let io: IOService
    let watcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)
    let onReadable: () -> Void

    init(_ io: IOService, fd: Int32, _ onReadable: @escaping () -> Void) {
        self.io = io
        self.onReadable = onReadable
        ioloop_ev_io_init(
            watcher,
            { loop, w, _ in
                let me = Unmanaged<ReadableOnce>.fromOpaque(w!.pointee.data).takeUnretainedValue()
                ev_io_stop(loop, w)
                me.io.enqueue(.handler(me.onReadable))
            }, fd, Int32(EV_READ))
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        io.beginWork()
        io.start(watcher)
    }

    deinit {
        io.stop(watcher)
        watcher.deallocate()
    }
}

/// How much slower a sanitizer makes this process (ThreadSanitizer ~10x CPU, AddressSanitizer ~3x): CPU
/// budgets of the tests are multiplied by it. 1 in a plain build. Detected from the sanitizer runtime's symbols.
let sanitizerSlowdown: Int = {
    let me = dlopen(nil, RTLD_NOW)
    if dlsym(me, "__tsan_init") != nil { return 10 }
    if dlsym(me, "__asan_init") != nil { return 3 }
    return 1
}()
