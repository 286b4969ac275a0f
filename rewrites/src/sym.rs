//! Symbolic dimensions: small integer expressions over named symbols, kept in a canonical form.
//!
//! A `SymDim` is built only through the constructors and operators below, which keep it canonical:
//! sums and products are normalised into a polynomial (sorted monomials with integer coefficients),
//! exact divisions are cancelled (`(B*C*H*W)/(B*32)` → `C*H*W/32` when 32 divides nothing, stays an
//! opaque floor division atom otherwise), and constant sub-expressions are evaluated. Two equal
//! canonical expressions compare equal with `==`, which is what shape checks rely on.
//! Symbols stand for dimension sizes, which are assumed to be ≥ 1 and < 2^62.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A symbolic dimension size.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SymDim {
    Const(i64),
    Sym(Arc<str>),
    /// A sum of at least two terms, in canonical order.
    Add(Arc<[SymDim]>),
    /// A product of at least two factors; a constant factor comes first.
    Mul(Arc<[SymDim]>),
    FloorDiv(Arc<(SymDim, SymDim)>),
    Mod(Arc<(SymDim, SymDim)>),
    Min(Arc<(SymDim, SymDim)>),
    Max(Arc<(SymDim, SymDim)>),
}

/// Constants at or above this are "infinity" for `min` (ONNX Slice uses INT64_MAX as "to the end").
const HUGE: i64 = 1 << 62;

/// A monomial: a sorted list of atoms (symbols or opaque div/mod/min/max), repeated for powers.
type Monomial = Vec<SymDim>;
/// A polynomial: monomial → non-zero integer coefficient.
type Poly = BTreeMap<Monomial, i64>;

impl SymDim {
    pub fn sym(name: &str) -> SymDim {
        SymDim::Sym(Arc::from(name))
    }

    pub fn konst(v: i64) -> SymDim {
        SymDim::Const(v)
    }

    pub fn as_const(&self) -> Option<i64> {
        match self {
            SymDim::Const(v) => Some(*v),
            _ => None,
        }
    }

    pub fn is_const(&self) -> bool {
        matches!(self, SymDim::Const(_))
    }

    fn to_poly(&self) -> Poly {
        let mut p = Poly::new();
        match self {
            SymDim::Const(0) => {}
            SymDim::Const(c) => {
                p.insert(vec![], *c);
            }
            SymDim::Add(terms) => {
                for t in terms.iter() {
                    p = poly_add(&p, &t.to_poly());
                }
            }
            SymDim::Mul(factors) => {
                p.insert(vec![], 1);
                for f in factors.iter() {
                    p = poly_mul(&p, &f.to_poly());
                }
            }
            atom => {
                p.insert(vec![atom.clone()], 1);
            }
        }
        p
    }

    fn from_poly(p: &Poly) -> SymDim {
        let mut terms: Vec<SymDim> = p
            .iter()
            .map(|(mono, &c)| {
                if mono.is_empty() {
                    return SymDim::Const(c);
                }
                let mut factors = Vec::with_capacity(mono.len() + 1);
                if c != 1 {
                    factors.push(SymDim::Const(c));
                }
                factors.extend(mono.iter().cloned());
                if factors.len() == 1 {
                    factors.pop().unwrap()
                } else {
                    SymDim::Mul(factors.into())
                }
            })
            .collect();
        match terms.len() {
            0 => SymDim::Const(0),
            1 => terms.pop().unwrap(),
            _ => {
                // Constant term last reads naturally: `H*W + 1`.
                terms.sort_by_key(|t| t.is_const());
                SymDim::Add(terms.into())
            }
        }
    }

    pub fn floor_div(&self, rhs: &SymDim) -> SymDim {
        if let (Some(a), Some(b)) = (self.as_const(), rhs.as_const()) {
            if b != 0 {
                return SymDim::Const(a.div_euclid(b) - if b < 0 && a.rem_euclid(b) != 0 { 1 } else { 0 });
            }
        }
        if *rhs == SymDim::Const(1) {
            return self.clone();
        }
        if let Some(q) = exact_div(&self.to_poly(), &rhs.to_poly()) {
            return SymDim::from_poly(&q);
        }
        SymDim::FloorDiv(Arc::new((self.clone(), rhs.clone())))
    }

    /// Ceiling division for positive divisors: `ceil(a / b)`.
    pub fn ceil_div(&self, rhs: &SymDim) -> SymDim {
        (self.clone() + rhs.clone() - SymDim::Const(1)).floor_div(rhs)
    }

    pub fn rem(&self, rhs: &SymDim) -> SymDim {
        if let (Some(a), Some(b)) = (self.as_const(), rhs.as_const()) {
            if b != 0 {
                return SymDim::Const(a - b * SymDim::Const(a).floor_div(&SymDim::Const(b)).as_const().unwrap());
            }
        }
        if exact_div(&self.to_poly(), &rhs.to_poly()).is_some() {
            return SymDim::Const(0);
        }
        SymDim::Mod(Arc::new((self.clone(), rhs.clone())))
    }

    pub fn min_of(&self, rhs: &SymDim) -> SymDim {
        if self == rhs {
            return self.clone();
        }
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => return SymDim::Const(a.min(b)),
            (Some(a), None) if a >= HUGE => return rhs.clone(),
            (None, Some(b)) if b >= HUGE => return self.clone(),
            _ => {}
        }
        if let Some(d) = (self.clone() - rhs.clone()).as_const() {
            return if d <= 0 { self.clone() } else { rhs.clone() };
        }
        let (a, b) = ordered(self, rhs);
        SymDim::Min(Arc::new((a, b)))
    }

    pub fn max_of(&self, rhs: &SymDim) -> SymDim {
        if self == rhs {
            return self.clone();
        }
        match (self.as_const(), rhs.as_const()) {
            (Some(a), Some(b)) => return SymDim::Const(a.max(b)),
            // Dimension expressions with non-negative coefficients are ≥ 0, and ≥ 1 when they have no constant term.
            (Some(a), None) if a <= rhs.lower_bound() => return rhs.clone(),
            (None, Some(b)) if b <= self.lower_bound() => return self.clone(),
            _ => {}
        }
        if let Some(d) = (self.clone() - rhs.clone()).as_const() {
            return if d >= 0 { self.clone() } else { rhs.clone() };
        }
        let (a, b) = ordered(self, rhs);
        SymDim::Max(Arc::new((a, b)))
    }

    /// A proven lower bound, assuming every symbol is ≥ 1 (i64::MIN when nothing is known).
    pub fn lower_bound(&self) -> i64 {
        match self {
            SymDim::Const(c) => *c,
            SymDim::Sym(_) => 1,
            SymDim::Add(ts) => ts.iter().map(|t| t.lower_bound()).fold(0i64, |a, b| a.saturating_add(b)),
            SymDim::Mul(fs) if fs.iter().all(|f| f.lower_bound() >= 0) => fs.iter().map(|f| f.lower_bound()).fold(1i64, |a, b| a.saturating_mul(b)),
            SymDim::FloorDiv(ab) | SymDim::Max(ab) if ab.0.lower_bound() >= 0 && ab.1.lower_bound() > 0 => 0,
            SymDim::Mod(_) => 0,
            SymDim::Min(ab) => ab.0.lower_bound().min(ab.1.lower_bound()),
            _ => i64::MIN,
        }
    }

    /// Evaluates with every symbol bound by `lookup`; errors name the unbound symbol or the bad division.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<i64, String> {
        Ok(match self {
            SymDim::Const(c) => *c,
            SymDim::Sym(s) => lookup(s).ok_or_else(|| format!("symbol '{s}' is not bound"))?,
            SymDim::Add(ts) => {
                let mut acc = 0i64;
                for t in ts.iter() {
                    acc = acc.wrapping_add(t.eval(lookup)?);
                }
                acc
            }
            SymDim::Mul(fs) => {
                let mut acc = 1i64;
                for f in fs.iter() {
                    acc = acc.wrapping_mul(f.eval(lookup)?);
                }
                acc
            }
            SymDim::FloorDiv(ab) => {
                let (a, b) = (ab.0.eval(lookup)?, ab.1.eval(lookup)?);
                if b == 0 {
                    return Err(format!("division by zero in {self}"));
                }
                SymDim::Const(a).floor_div(&SymDim::Const(b)).as_const().unwrap()
            }
            SymDim::Mod(ab) => {
                let (a, b) = (ab.0.eval(lookup)?, ab.1.eval(lookup)?);
                if b == 0 {
                    return Err(format!("modulo by zero in {self}"));
                }
                SymDim::Const(a).rem(&SymDim::Const(b)).as_const().unwrap()
            }
            SymDim::Min(ab) => ab.0.eval(lookup)?.min(ab.1.eval(lookup)?),
            SymDim::Max(ab) => ab.0.eval(lookup)?.max(ab.1.eval(lookup)?),
        })
    }

    /// Evaluates with a map of bindings.
    pub fn eval_with(&self, bindings: &BTreeMap<String, i64>) -> Result<i64, String> {
        self.eval(&|s| bindings.get(s).copied())
    }

    /// Replaces symbols by expressions (`None` leaves a symbol as it is), re-canonicalising.
    pub fn substitute(&self, f: &dyn Fn(&str) -> Option<SymDim>) -> SymDim {
        match self {
            SymDim::Const(_) => self.clone(),
            SymDim::Sym(s) => f(s).unwrap_or_else(|| self.clone()),
            SymDim::Add(ts) => ts.iter().fold(SymDim::Const(0), |acc, t| acc + t.substitute(f)),
            SymDim::Mul(fs) => fs.iter().fold(SymDim::Const(1), |acc, t| acc * t.substitute(f)),
            SymDim::FloorDiv(ab) => ab.0.substitute(f).floor_div(&ab.1.substitute(f)),
            SymDim::Mod(ab) => ab.0.substitute(f).rem(&ab.1.substitute(f)),
            SymDim::Min(ab) => ab.0.substitute(f).min_of(&ab.1.substitute(f)),
            SymDim::Max(ab) => ab.0.substitute(f).max_of(&ab.1.substitute(f)),
        }
    }

    /// Every symbol name that occurs, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.collect_symbols(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_symbols(&self, out: &mut Vec<Arc<str>>) {
        match self {
            SymDim::Const(_) => {}
            SymDim::Sym(s) => out.push(s.clone()),
            SymDim::Add(xs) | SymDim::Mul(xs) => xs.iter().for_each(|x| x.collect_symbols(out)),
            SymDim::FloorDiv(ab) | SymDim::Mod(ab) | SymDim::Min(ab) | SymDim::Max(ab) => {
                ab.0.collect_symbols(out);
                ab.1.collect_symbols(out);
            }
        }
    }
}

fn ordered(a: &SymDim, b: &SymDim) -> (SymDim, SymDim) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn poly_add(a: &Poly, b: &Poly) -> Poly {
    let mut out = a.clone();
    for (m, c) in b {
        let e = out.entry(m.clone()).or_insert(0);
        *e += c;
        if *e == 0 {
            out.remove(m);
        }
    }
    out
}

fn poly_mul(a: &Poly, b: &Poly) -> Poly {
    let mut out = Poly::new();
    for (ma, ca) in a {
        for (mb, cb) in b {
            let mut m: Monomial = ma.iter().chain(mb.iter()).cloned().collect();
            m.sort();
            let e = out.entry(m.clone()).or_insert(0);
            *e += ca * cb;
            if *e == 0 {
                out.remove(&m);
            }
        }
    }
    out
}

/// `a / b` when `b` is one monomial that divides every monomial of `a` exactly.
fn exact_div(a: &Poly, b: &Poly) -> Option<Poly> {
    if b.len() != 1 {
        return None;
    }
    let (bm, &bc) = b.iter().next().unwrap();
    if bc == 0 {
        return None;
    }
    let mut out = Poly::new();
    for (am, &ac) in a {
        if ac % bc != 0 {
            return None;
        }
        let mut rest = am.clone();
        for atom in bm {
            let pos = rest.iter().position(|x| x == atom)?;
            rest.remove(pos);
        }
        out.insert(rest, ac / bc);
    }
    Some(out)
}

impl From<i64> for SymDim {
    fn from(v: i64) -> SymDim {
        SymDim::Const(v)
    }
}

impl From<usize> for SymDim {
    fn from(v: usize) -> SymDim {
        SymDim::Const(v as i64)
    }
}

impl std::ops::Add for SymDim {
    type Output = SymDim;
    fn add(self, rhs: SymDim) -> SymDim {
        if let (Some(a), Some(b)) = (self.as_const(), rhs.as_const()) {
            return SymDim::Const(a.wrapping_add(b));
        }
        SymDim::from_poly(&poly_add(&self.to_poly(), &rhs.to_poly()))
    }
}

impl std::ops::Sub for SymDim {
    type Output = SymDim;
    fn sub(self, rhs: SymDim) -> SymDim {
        self + rhs * SymDim::Const(-1)
    }
}

impl std::ops::Mul for SymDim {
    type Output = SymDim;
    fn mul(self, rhs: SymDim) -> SymDim {
        if let (Some(a), Some(b)) = (self.as_const(), rhs.as_const()) {
            return SymDim::Const(a.wrapping_mul(b));
        }
        SymDim::from_poly(&poly_mul(&self.to_poly(), &rhs.to_poly()))
    }
}

impl std::ops::Neg for SymDim {
    type Output = SymDim;
    fn neg(self) -> SymDim {
        SymDim::Const(0) - self
    }
}

impl std::iter::Product for SymDim {
    fn product<I: Iterator<Item = SymDim>>(iter: I) -> SymDim {
        iter.fold(SymDim::Const(1), |a, b| a * b)
    }
}

impl std::iter::Sum for SymDim {
    fn sum<I: Iterator<Item = SymDim>>(iter: I) -> SymDim {
        iter.fold(SymDim::Const(0), |a, b| a + b)
    }
}

impl fmt::Display for SymDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymDim::Const(c) => write!(f, "{c}"),
            SymDim::Sym(s) => f.write_str(s),
            SymDim::Add(ts) => {
                for (i, t) in ts.iter().enumerate() {
                    match (i, t.as_const()) {
                        (0, _) => write!(f, "{t}")?,
                        (_, Some(c)) if c < 0 => write!(f, " - {}", -c)?,
                        _ => write!(f, " + {t}")?,
                    }
                }
                Ok(())
            }
            SymDim::Mul(fs) => {
                for (i, x) in fs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("*")?;
                    }
                    if matches!(x, SymDim::Add(_)) {
                        write!(f, "({x})")?;
                    } else {
                        write!(f, "{x}")?;
                    }
                }
                Ok(())
            }
            SymDim::FloorDiv(ab) => write!(f, "({} / {})", Operand(&ab.0), Operand(&ab.1)),
            SymDim::Mod(ab) => write!(f, "({} % {})", Operand(&ab.0), Operand(&ab.1)),
            SymDim::Min(ab) => write!(f, "min({}, {})", ab.0, ab.1),
            SymDim::Max(ab) => write!(f, "max({}, {})", ab.0, ab.1),
        }
    }
}

impl fmt::Debug for SymDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// An operand of `/` or `%`, bracketed when it is a sum or product so `(H + 1) / 2` reads right.
struct Operand<'a>(&'a SymDim);

impl fmt::Display for Operand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SymDim::Add(_) | SymDim::Mul(_) => write!(f, "({})", self.0),
            other => write!(f, "{other}"),
        }
    }
}

/// Formats a symbolic shape as `[B, 4, H, W]`.
pub fn shape_string(shape: &[SymDim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> SymDim {
        SymDim::sym(n)
    }

    #[test]
    fn products_cancel_exactly() {
        let b = s("B");
        let total = b.clone() * SymDim::from(320i64) * s("H") * s("W");
        let per_group = total.floor_div(&(b.clone() * SymDim::from(32i64)));
        assert_eq!(per_group, SymDim::from(10i64) * s("H") * s("W"));
        assert_eq!(per_group.to_string(), "10*H*W");
    }

    #[test]
    fn inexact_division_stays_opaque_and_evaluates() {
        let d = s("H").floor_div(&SymDim::from(3i64));
        assert!(matches!(d, SymDim::FloorDiv(_)));
        let mut env = BTreeMap::new();
        env.insert("H".to_string(), 10);
        assert_eq!(d.eval_with(&env).unwrap(), 3);
        assert_eq!(s("H").rem(&SymDim::from(3i64)).eval_with(&env).unwrap(), 1);
    }

    #[test]
    fn sums_are_canonical() {
        let a = s("H") + SymDim::from(1i64) + s("W");
        let b = s("W") + s("H") + SymDim::from(1i64);
        assert_eq!(a, b);
        assert_eq!((a.clone() - a).as_const(), Some(0));
        assert_eq!((s("H") * SymDim::from(2i64)).floor_div(&SymDim::from(2i64)), s("H"));
    }

    #[test]
    fn min_max_simplify() {
        assert_eq!(s("H").min_of(&SymDim::from(i64::MAX)), s("H"));
        assert_eq!(SymDim::from(0i64).max_of(&s("H")), s("H"));
        assert_eq!((s("H") + SymDim::from(2i64)).min_of(&s("H")), s("H"));
        let m = s("H").max_of(&s("W"));
        let mut env = BTreeMap::new();
        env.insert("H".to_string(), 4);
        env.insert("W".to_string(), 7);
        assert_eq!(m.eval_with(&env).unwrap(), 7);
        assert!(s("Q").eval_with(&env).unwrap_err().contains("'Q'"));
        let half = (s("H") + SymDim::from(1i64)).floor_div(&SymDim::from(2i64));
        assert_eq!(half.to_string(), "((H + 1) / 2)");
    }

    #[test]
    fn negative_floor_division_rounds_down() {
        assert_eq!(SymDim::from(-7i64).floor_div(&SymDim::from(2i64)).as_const(), Some(-4));
        assert_eq!(SymDim::from(-7i64).rem(&SymDim::from(2i64)).as_const(), Some(1));
    }
}
