//! Metadata values: the thirteen GGUF value types, scalars in [`Value`] and homogeneous arrays
//! in [`Array`], with lenient typed accessors.

/// On-disk GGUF value type ids.
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    /// Encoded size of one element of a fixed-size type, or `None` for strings, arrays and
    /// unknown ids.
    pub fn fixed_size(id: u32) -> Option<usize> {
        match id {
            U8 | I8 | BOOL => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            _ => None,
        }
    }

    /// The smallest encoding of one element: used to bound counts by the bytes left.
    pub fn min_size(id: u32) -> Option<usize> {
        match id {
            STRING => Some(8),
            ARRAY => Some(12),
            _ => fixed_size(id),
        }
    }

    /// Lower-case name of a type id.
    pub fn name(id: u32) -> &'static str {
        match id {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            BOOL => "bool",
            STRING => "string",
            ARRAY => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
            _ => "unknown",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A homogeneous metadata array. Arrays of arrays are allowed (each inner array has its own
/// element type), up to [`super::MAX_ARRAY_DEPTH`] levels.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

impl Value {
    /// Any non-negative integer value (not bools, not floats).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an `i64` (not bools, not floats).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floats and integers as `f64` (64-bit integers may round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Lower-case type name (`"u32"`, `"string"`, `"array"`, ...), for error messages.
    pub fn type_name(&self) -> &'static str {
        type_id::name(self.type_id())
    }

    /// The on-disk type id.
    pub(crate) fn type_id(&self) -> u32 {
        use type_id as t;
        match self {
            Value::U8(_) => t::U8,
            Value::I8(_) => t::I8,
            Value::U16(_) => t::U16,
            Value::I16(_) => t::I16,
            Value::U32(_) => t::U32,
            Value::I32(_) => t::I32,
            Value::U64(_) => t::U64,
            Value::I64(_) => t::I64,
            Value::F32(_) => t::F32,
            Value::F64(_) => t::F64,
            Value::Bool(_) => t::BOOL,
            Value::String(_) => t::STRING,
            Value::Array(_) => t::ARRAY,
        }
    }
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lower-case name of the element type (`"i32"`, `"string"`, ...).
    pub fn elem_type_name(&self) -> &'static str {
        type_id::name(self.elem_type_id())
    }

    /// The on-disk element type id.
    pub(crate) fn elem_type_id(&self) -> u32 {
        use type_id as t;
        match self {
            Array::U8(_) => t::U8,
            Array::I8(_) => t::I8,
            Array::U16(_) => t::U16,
            Array::I16(_) => t::I16,
            Array::U32(_) => t::U32,
            Array::I32(_) => t::I32,
            Array::U64(_) => t::U64,
            Array::I64(_) => t::I64,
            Array::F32(_) => t::F32,
            Array::F64(_) => t::F64,
            Array::Bool(_) => t::BOOL,
            Array::String(_) => t::STRING,
            Array::Array(_) => t::ARRAY,
        }
    }

    /// Integer (every element non-negative) or bool elements as `u64`; `None` for other element
    /// types or when an element is negative.
    pub fn to_u64_vec(&self) -> Option<Vec<u64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<u64>) -> Option<Vec<u64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U64(v) => Some(v.clone()),
            Array::Bool(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I8(v) => conv(v, |x| u64::try_from(x).ok()),
            Array::I16(v) => conv(v, |x| u64::try_from(x).ok()),
            Array::I32(v) => conv(v, |x| u64::try_from(x).ok()),
            Array::I64(v) => conv(v, |x| u64::try_from(x).ok()),
            _ => None,
        }
    }

    /// Integer or bool elements as `i64`; `None` for other element types or when a `u64`
    /// element does not fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match self {
            Array::U8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            Array::I8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I64(v) => Some(v.clone()),
            Array::Bool(v) => Some(v.iter().map(|&x| x.into()).collect()),
            _ => None,
        }
    }

    /// Float or integer elements as `f32` (rounding as `as` does); `None` for bools, strings and
    /// arrays.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        Some(match self {
            Array::F32(v) => v.clone(),
            Array::F64(v) => v.iter().map(|&x| x as f32).collect(),
            Array::U8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I8(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::I16(v) => v.iter().map(|&x| x.into()).collect(),
            Array::U32(v) => v.iter().map(|&x| x as f32).collect(),
            Array::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Array::U64(v) => v.iter().map(|&x| x as f32).collect(),
            Array::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Array::Bool(_) | Array::String(_) | Array::Array(_) => return None,
        })
    }

    /// The strings, if this is a string array.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// The inner arrays, if this is an array of arrays.
    pub fn as_arrays(&self) -> Option<&[Array]> {
        match self {
            Array::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Nesting depth: 1 for an array of scalars or strings, 1 + the deepest inner array
    /// otherwise (an empty array of arrays counts 1).
    pub fn depth(&self) -> usize {
        match self {
            Array::Array(v) => 1 + v.iter().map(Array::depth).max().unwrap_or(0),
            _ => 1,
        }
    }
}

macro_rules! impl_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(
            impl From<$t> for Value {
                fn from(v: $t) -> Value {
                    Value::$variant(v)
                }
            }
            impl From<Vec<$t>> for Array {
                fn from(v: Vec<$t>) -> Array {
                    Array::$variant(v)
                }
            }
            impl From<Vec<$t>> for Value {
                fn from(v: Vec<$t>) -> Value {
                    Value::Array(Array::$variant(v))
                }
            }
        )*
    };
}

impl_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String,
);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Value {
        Value::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_accessors_respect_sign_and_range() {
        assert_eq!(Value::I32(-1).as_u64(), None);
        assert_eq!(Value::I32(7).as_u64(), Some(7));
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::U64(5).as_i64(), Some(5));
        assert_eq!(Value::Bool(true).as_u64(), None);
        assert_eq!(Value::F32(1.0).as_u64(), None);
        assert_eq!(Value::F32(1.5).as_f64(), Some(1.5));
        assert_eq!(Value::I8(-3).as_f64(), Some(-3.0));
        assert_eq!(Value::from("x").as_str(), Some("x"));
        assert_eq!(Value::U8(1).as_bool(), None);
        assert_eq!(Value::U16(1).type_name(), "u16");
        assert_eq!(Value::from(vec![1u32]).type_name(), "array");
    }

    #[test]
    fn array_conversions() {
        assert_eq!(Array::I32(vec![1, 2]).to_u64_vec(), Some(vec![1, 2]));
        assert_eq!(Array::I32(vec![1, -2]).to_u64_vec(), None);
        assert_eq!(
            Array::Bool(vec![true, false]).to_u64_vec(),
            Some(vec![1, 0])
        );
        assert_eq!(Array::U64(vec![u64::MAX]).to_i64_vec(), None);
        assert_eq!(Array::I8(vec![-1]).to_i64_vec(), Some(vec![-1]));
        assert_eq!(Array::F64(vec![0.5]).to_f32_vec(), Some(vec![0.5]));
        assert_eq!(Array::U32(vec![3]).to_f32_vec(), Some(vec![3.0]));
        assert_eq!(Array::Bool(vec![true]).to_f32_vec(), None);
        assert_eq!(
            Array::String(vec!["a".into()]).as_strings().map(<[_]>::len),
            Some(1)
        );
        assert_eq!(Array::F32(vec![]).to_u64_vec(), None);
        assert!(Array::U8(vec![]).is_empty());
        let nested = Array::Array(vec![
            Array::Array(vec![Array::U8(vec![1])]),
            Array::U8(vec![]),
        ]);
        assert_eq!(nested.depth(), 3);
        assert_eq!(nested.len(), 2);
        assert_eq!(nested.elem_type_name(), "array");
    }
}
