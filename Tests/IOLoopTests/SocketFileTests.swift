import Foundation
import Glibc
import Testing

@testable import IOLoop

@Suite("UNIX socket files")
struct SocketFileTests {
    @Test func staleSocketIsReclaimed() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("s.sock")
        try makeStaleSocket(path)
        #expect(fileExists(path))
        let acceptor = try UnixStreamAcceptor(io, path: path)
        // It is ours now: a client can connect.
        var accepted = false
        acceptor.asyncAccept { accepted = (try? $0.get()) != nil }
        let client = UnixStreamSocket(io)
        client.asyncConnect(to: path) { #expect($0 == nil) }
        try io.run(for: .seconds(5))
        #expect(accepted)
    }

    @Test func staleSocketKeptWhenRemovalIsOff() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("s.sock")
        try makeStaleSocket(path)
        #expect {
            _ = try UnixStreamAcceptor(io, path: path, options: UnixAcceptorOptions(removeStaleSocket: false))
        } throws: { ($0 as? IOError)?.errnoValue == EADDRINUSE }
        #expect(fileExists(path))
    }

    @Test func liveServerIsInUse() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("live.sock")
        let first = try UnixStreamAcceptor(io, path: path)
        var error: IOError?
        do {
            _ = try UnixStreamAcceptor(io, path: path)
        } catch let e as IOError {
            error = e
        }
        #expect(error?.errnoValue == EADDRINUSE)
        #expect(error?.description.contains("in use") == true)
        // The first server's file is untouched and it still listens.
        #expect(fileExists(path))
        #expect(first.isOpen)
    }

    @Test func regularFileIsNeverRemoved() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("file.sock")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: path))
        var error: IOError?
        do { _ = try UnixStreamAcceptor(io, path: path) } catch let e as IOError { error = e }
        #expect(error?.errnoValue == EEXIST)
        #expect(error?.description.contains("regular file") == true)
        #expect(error?.description.contains(path) == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data("precious".utf8))
    }

    @Test func directoryAndSymlinkAreNeverRemoved() throws {
        let io = try IOService()
        let dir = TempDir()
        let d = dir.file("dir.sock")
        #expect(mkdir(d, 0o700) == 0)
        var error: IOError?
        do { _ = try UnixStreamAcceptor(io, path: d) } catch let e as IOError { error = e }
        #expect(error?.description.contains("a directory") == true)
        #expect(fileExists(d))

        // A symbolic link, even one pointing at a stale socket, is left alone.
        let target = dir.file("t.sock")
        try makeStaleSocket(target)
        let link = dir.file("l.sock")
        #expect(symlink(target, link) == 0)
        error = nil
        do { _ = try UnixStreamAcceptor(io, path: link) } catch let e as IOError { error = e }
        #expect(error?.description.contains("symbolic link") == true)
        #expect(fileExists(link) && fileExists(target))
    }

    @Test func tooLongPathRejectedBeforeAnySyscall() throws {
        let io = try IOService()
        // The directory doesn't exist: any syscall would fail with ENOENT instead.
        let path = "/nonexistent-iol/" + String(repeating: "x", count: 100) + ".sock"
        var error: IOError?
        do { _ = try UnixStreamAcceptor(io, path: path) } catch let e as IOError { error = e }
        #expect(error?.errnoValue == ENAMETOOLONG)
        #expect(error?.description.contains("\(path.utf8.count) bytes") == true)
        #expect(error?.description.contains("107") == true)

        // The connect side reports the same through its handler, never inline.
        let client = UnixStreamSocket(io)
        var connectError: IOError?
        client.asyncConnect(to: path) { connectError = $0 }
        #expect(connectError == nil)
        try io.run(for: .seconds(5))
        #expect(connectError?.errnoValue == ENAMETOOLONG)
    }

    @Test func secondInstanceRefusedByLock() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("lk.sock")
        let options = UnixAcceptorOptions(useLockFile: true)
        let first = try UnixStreamAcceptor(io, path: path, options: options)
        #expect(fileMode(path + ".lock") == 0o600)
        var error: IOError?
        do { _ = try UnixStreamAcceptor(io, path: path, options: options) } catch let e as IOError { error = e }
        #expect(error?.errnoValue == EWOULDBLOCK)
        #expect(error?.description.contains("another instance") == true)
        // The first instance is untouched.
        #expect(fileExists(path) && fileExists(path + ".lock"))
        var accepted = false
        first.asyncAccept { accepted = (try? $0.get()) != nil }
        let c = UnixStreamSocket(io)
        c.asyncConnect(to: path) { #expect($0 == nil) }
        try io.run(for: .seconds(5))
        #expect(accepted)
        first.close()
        #expect(!fileExists(path) && !fileExists(path + ".lock"))
        // And a new instance can start after it.
        let third = try UnixStreamAcceptor(io, path: path, options: options)
        #expect(third.isOpen)
    }

    @Test func socketModeIsSetExplicitly() throws {
        let io = try IOService()
        let dir = TempDir()
        let a = try UnixStreamAcceptor(io, path: dir.file("m1.sock"))
        #expect(fileMode(a.path) == 0o600)
        let b = try UnixStreamAcceptor(io, path: dir.file("m2.sock"), options: UnixAcceptorOptions(mode: 0o660))
        #expect(fileMode(b.path) == 0o660)
    }

    @Test func closeDoesNotRemoveAReplacedFile() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("r.sock")
        let a = try UnixStreamAcceptor(io, path: path)
        // Someone else replaces the path with their own file; our close must leave it.
        #expect(unlink(path) == 0)
        try Data("theirs".utf8).write(to: URL(fileURLWithPath: path))
        a.close()
        #expect(fileExists(path))
    }

    @Test func deinitRemovesSocketFile() throws {
        let io = try IOService()
        let dir = TempDir()
        let path = dir.file("d.sock")
        do {
            let a = try UnixStreamAcceptor(io, path: path)
            #expect(a.isOpen && fileExists(path))
        }
        #expect(!fileExists(path))
    }
}
