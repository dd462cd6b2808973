// JSONValue: the JSON value type of the control channel (Kea's isc::data::Element).

/// A JSON value: what a control-channel command and its answer are made of.
///
/// Integers and reals are distinct cases, as in Kea (`integer` vs `real` elements): `1` parses as
/// `.integer(1)` and `1.0` as `.double(1.0)`, and each serializes back the same way. Maps keep the order in
/// which their keys were inserted (see ``JSONObject``), so serialization is deterministic.
///
/// Equality and hashing are structural; for maps they ignore key order (two maps are equal when they hold the
/// same keys with equal values), and `.integer(1)` is not equal to `.double(1.0)`.
///
/// Build values with literals: `let cmd: JSONValue = ["command": "list-commands", "arguments": [:]]`.
///
/// Thread contract: an immutable value, `Sendable`.
/// Kea counterpart: `isc::data::Element` (`ElementPtr`) and its subclasses.
public enum JSONValue: Sendable, Hashable {
    /// JSON `null` (Kea `NullElement`, type name `null`).
    case null
    /// JSON `true`/`false` (Kea `BoolElement`, type name `boolean`).
    case bool(Bool)
    /// A number written without fraction or exponent that fits in 64 bits (Kea `IntElement`, type `integer`).
    case integer(Int64)
    /// A number written with a fraction or an exponent (Kea `DoubleElement`, type name `real`).
    case double(Double)
    /// A string (Kea `StringElement`, type name `string`).
    case string(String)
    /// An array (Kea `ListElement`, type name `list`).
    case array([JSONValue])
    /// An object with insertion-ordered keys (Kea `MapElement`, type name `map`).
    case object(JSONObject)
}

// MARK: - Type names and accessors

extension JSONValue {
    /// Kea's name of this value's type, for error texts: `map`, `list`, `string`, `integer`, `real`,
    /// `boolean` or `null`.
    ///
    /// Kea counterpart: `Element::typeToName(element->getType())`.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .integer: return "integer"
        case .double: return "real"
        case .string: return "string"
        case .array: return "list"
        case .object: return "map"
        }
    }

    /// Whether this is `.null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The boolean if this is `.bool`, else nil (no conversion from other types).
    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The integer if this is `.integer`, else nil. A `.double` is not converted (Kea `intValue()` is strict too).
    public var intValue: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    /// The number as a Double if this is `.double` or `.integer`, else nil.
    public var doubleValue: Double? {
        switch self {
        case .double(let d): return d
        case .integer(let i): return Double(i)
        default: return nil
        }
    }

    /// The string if this is `.string`, else nil.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The elements if this is `.array`, else nil.
    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The map if this is `.object`, else nil.
    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// The value for `key` if this is an object holding that key; nil otherwise (also when not an object).
    ///
    /// Setting through this subscript turns a non-object value into an object first; setting nil removes
    /// the key. Kea counterpart: `Element::get(key)` / `set(key, value)` / `remove(key)`.
    public subscript(key: String) -> JSONValue? {
        get {
            if case .object(let o) = self { return o[key] }
            return nil
        }
        set {
            var object: JSONObject
            if case .object(let o) = self {
                object = o
                self = .null  // release our reference so `object` is uniquely referenced
            } else {
                object = JSONObject()
            }
            object[key] = newValue
            self = .object(object)
        }
    }

    /// The element at `index` if this is an array and the index is in range; nil otherwise.
    public subscript(index: Int) -> JSONValue? {
        if case .array(let a) = self, a.indices.contains(index) { return a[index] }
        return nil
    }
}

// MARK: - Literals

extension JSONValue: ExpressibleByNilLiteral {
    /// `nil` as a literal is JSON `null`.
    public init(nilLiteral: ()) { self = .null }
}

extension JSONValue: ExpressibleByBooleanLiteral {
    /// A boolean literal.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension JSONValue: ExpressibleByIntegerLiteral {
    /// An integer literal is `.integer`.
    public init(integerLiteral value: Int64) { self = .integer(value) }
}

extension JSONValue: ExpressibleByFloatLiteral {
    /// A float literal is `.double`.
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension JSONValue: ExpressibleByStringLiteral {
    /// A string literal.
    public init(stringLiteral value: String) { self = .string(value) }
}

extension JSONValue: ExpressibleByArrayLiteral {
    /// An array literal.
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
}

extension JSONValue: ExpressibleByDictionaryLiteral {
    /// A dictionary literal is an object whose keys keep the literal's order (a repeated key: the last wins).
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        var object = JSONObject(minimumCapacity: elements.count)
        for (k, v) in elements { object[k] = v }
        self = .object(object)
    }
}

extension JSONValue {
    /// Wraps an `Int` as `.integer`.
    public init(_ value: Int) { self = .integer(Int64(value)) }
    /// Wraps an `Int64` as `.integer`.
    public init(_ value: Int64) { self = .integer(value) }
    /// Wraps a `Double` as `.double`.
    public init(_ value: Double) { self = .double(value) }
    /// Wraps a `String` as `.string`.
    public init(_ value: String) { self = .string(value) }
    /// Wraps a `Bool` as `.bool`.
    public init(_ value: Bool) { self = .bool(value) }
    /// Wraps an array.
    public init(_ value: [JSONValue]) { self = .array(value) }
    /// Wraps an object.
    public init(_ value: JSONObject) { self = .object(value) }
}

// MARK: - JSONObject

/// An insertion-ordered JSON map from `String` keys to ``JSONValue``s.
///
/// Iteration and serialization follow insertion order; replacing the value of an existing key keeps its
/// position; removing a key shifts the later ones. Lookup is a linear scan for small maps and a hash index
/// for maps of more than 16 keys. Equality and hashing ignore order.
///
/// Self-contained on purpose (no swift-collections dependency for the ControlChannel module).
/// Thread contract: a value type, `Sendable`.
/// Kea counterpart: `MapElement` (Kea keeps keys sorted; we keep insertion order, both are deterministic).
public struct JSONObject: Sendable, Hashable, RandomAccessCollection, ExpressibleByDictionaryLiteral {
    /// A key and its value.
    public typealias Element = (key: String, value: JSONValue)
    /// Positions are 0-based offsets in insertion order.
    public typealias Index = Int

    /// One member: keys and values live side by side in one array (one allocation per map, not two).
    @usableFromInline struct Entry: Sendable {
        @usableFromInline var key: String
        @usableFromInline var value: JSONValue
        @usableFromInline init(key: String, value: JSONValue) {
            self.key = key
            self.value = value
        }
    }

    @usableFromInline var _entries: [Entry]
    /// key → position; built only once the map has more than `indexThreshold` keys.
    @usableFromInline var _index: [String: Int]?

    @usableFromInline static var indexThreshold: Int { 16 }

    /// An empty map.
    public init() {
        _entries = []
        _index = nil
    }

    /// An empty map with room for `minimumCapacity` keys.
    public init(minimumCapacity: Int) {
        self.init()
        _entries.reserveCapacity(minimumCapacity)
    }

    /// A map from a literal; a repeated key keeps its first position and its last value.
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(minimumCapacity: elements.count)
        for (k, v) in elements { self[k] = v }
    }

    /// A map from key/value pairs in order; a repeated key keeps its first position and its last value.
    public init<S: Sequence>(_ pairs: S) where S.Element == (String, JSONValue) {
        self.init()
        for (k, v) in pairs { self[k] = v }
    }

    /// Builds from entries known to hold unique keys (parser fast path).
    init(uniqueEntries entries: [Entry]) {
        _entries = entries
        _index = nil
        if entries.count > Self.indexThreshold { buildIndex() }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { _entries.count }
    public var count: Int { _entries.count }
    public var isEmpty: Bool { _entries.isEmpty }

    public subscript(position: Int) -> Element {
        let e = _entries[position]
        return (e.key, e.value)
    }

    /// The keys in insertion order (a new array; iterate the map itself to avoid it).
    public var keys: [String] { _entries.map(\.key) }
    /// The values in insertion order (a new array; iterate the map itself to avoid it).
    public var values: [JSONValue] { _entries.map(\.value) }

    /// The position of `key`, or nil.
    public func index(forKey key: String) -> Int? {
        if let index = _index { return index[key] }
        return _entries.firstIndex { $0.key == key }
    }

    /// The value for `key`, or nil. Setting a value replaces it in place or appends the key; setting nil removes it.
    public subscript(key: String) -> JSONValue? {
        get {
            guard let i = index(forKey: key) else { return nil }
            return _entries[i].value
        }
        set {
            if let newValue {
                updateValue(newValue, forKey: key)
            } else {
                removeValue(forKey: key)
            }
        }
    }

    /// Sets the value of `key` (in place if present, else appended); returns the previous value.
    @discardableResult
    public mutating func updateValue(_ value: JSONValue, forKey key: String) -> JSONValue? {
        if let i = index(forKey: key) {
            let old = _entries[i].value
            _entries[i].value = value
            return old
        }
        _entries.append(Entry(key: key, value: value))
        if _index != nil {
            _index![key] = _entries.count - 1
        } else if _entries.count > Self.indexThreshold {
            buildIndex()
        }
        return nil
    }

    /// Removes `key` and returns its value, or nil if absent. Later keys keep their relative order.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> JSONValue? {
        guard let i = index(forKey: key) else { return nil }
        let old = _entries.remove(at: i).value
        if _index != nil {
            if _entries.count > Self.indexThreshold { buildIndex() } else { _index = nil }
        }
        return old
    }

    @usableFromInline mutating func buildIndex() {
        var index = [String: Int](minimumCapacity: _entries.count)
        for (i, e) in _entries.enumerated() { index[e.key] = i }
        _index = index
    }

    /// Order-insensitive: same keys, equal values.
    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.count == rhs.count else { return false }
        if lhs._entries.elementsEqual(rhs._entries, by: { $0.key == $1.key && $0.value == $1.value }) { return true }
        for e in lhs._entries {
            guard let v = rhs[e.key], v == e.value else { return false }
        }
        return true
    }

    /// Order-insensitive hash (a commutative sum of per-entry hashes).
    public func hash(into hasher: inout Hasher) {
        var sum = 0
        for e in _entries {
            var h = Hasher()
            h.combine(e.key)
            h.combine(e.value)
            sum &+= h.finalize()
        }
        hasher.combine(count)
        hasher.combine(sum)
    }
}

extension JSONValue: CustomStringConvertible {
    /// The compact JSON text of this value.
    public var description: String { serializedString() }
}

extension JSONObject: CustomStringConvertible {
    /// The compact JSON text of this map.
    public var description: String { JSONValue.object(self).serializedString() }
}
