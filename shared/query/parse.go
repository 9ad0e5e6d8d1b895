package query

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/factsync/factsync/events"
)

// Parse reads the written form of a filter (docs/query-language.md):
//
//	expr    = and { "or" and }
//	and     = unary { "and" unary }
//	unary   = "not" unary | "(" expr ")" | call | field cmp value
//	cmp     = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "contains" | "prefix"
//	call    = "exists" "(" field ")"
//	        | "within_radius" "(" field "," num "," num "," num ")"
//	        | "within_bounds" "(" field "," num "," num "," num "," num ")"
//	field   = identifier | `any name`
//	value   = JSON value (string, number, true, false, null, array, object)
//
// Errors carry ReasonBadQuery and the 1-based column of the problem.
func Parse(where string) (*Filter, error) {
	if len(where) > MaxWhereLen {
		return nil, events.Errorf(events.ReasonBadQuery, "at column %d: filter is %d characters, limit %d", MaxWhereLen+1, len(where), MaxWhereLen)
	}
	p := &parser{src: where}
	p.advance()
	f, err := p.expr(1)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tokEOF {
		return nil, p.errorf("unexpected %s after the end of the filter", p.tok)
	}
	// The parser checks each node as it builds it; this adds the size limits.
	if err := f.Check(); err != nil {
		return nil, err
	}
	return f, nil
}

type tokKind int

const (
	tokEOF tokKind = iota
	tokIdent
	tokQuoted // `field name`
	tokString
	tokNumber
	tokPunct
)

type token struct {
	kind tokKind
	text string // identifier, punctuation, or the literal's source text
	pos  int    // byte offset
}

func (t token) String() string {
	if t.kind == tokEOF {
		return "end of filter"
	}
	return strconv.Quote(t.text)
}

type parser struct {
	src string
	off int
	tok token
	err error // a lexing error, reported when the token is used
}

func (p *parser) errorf(format string, args ...any) error {
	return p.errorAt(p.tok.pos, format, args...)
}

func (p *parser) errorAt(pos int, format string, args ...any) error {
	return events.Errorf(events.ReasonBadQuery, "at column %d: %s", pos+1, fmt.Sprintf(format, args...))
}

// advance reads the next token into p.tok.
func (p *parser) advance() {
	for p.off < len(p.src) && strings.IndexByte(" \t\r\n", p.src[p.off]) >= 0 {
		p.off++
	}
	start := p.off
	if start >= len(p.src) {
		p.tok = token{kind: tokEOF, pos: start}
		return
	}
	c := p.src[start]
	switch {
	case isIdentStart(c):
		end := start
		for end < len(p.src) && isIdentPart(p.src[end]) {
			end++
		}
		p.tok = token{kind: tokIdent, text: p.src[start:end], pos: start}
	case c == '`':
		end := strings.IndexByte(p.src[start+1:], '`')
		if end < 0 {
			p.fail(start, "unterminated `field name`")
			return
		}
		p.tok = token{kind: tokQuoted, text: p.src[start+1 : start+1+end], pos: start}
		p.off = start + end + 2
		return
	case c == '"':
		end := start + 1
		for end < len(p.src) && p.src[end] != '"' {
			if p.src[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(p.src) {
			p.fail(start, "unterminated string")
			return
		}
		p.tok = token{kind: tokString, text: p.src[start : end+1], pos: start}
		p.off = end + 1
		return
	case c == '-' || c >= '0' && c <= '9':
		end := start + 1
		for end < len(p.src) && strings.IndexByte("0123456789.eE+-", p.src[end]) >= 0 {
			end++
		}
		p.tok = token{kind: tokNumber, text: p.src[start:end], pos: start}
	default:
		for _, op := range []string{"==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", "{", "}", ",", ":"} {
			if strings.HasPrefix(p.src[start:], op) {
				p.tok = token{kind: tokPunct, text: op, pos: start}
				p.off = start + len(op)
				return
			}
		}
		p.fail(start, "unexpected character %q", p.src[start:start+1])
		return
	}
	p.off = start + len(p.tok.text)
}

// fail records a lexing error; the parser reports it at the current token.
func (p *parser) fail(pos int, format string, args ...any) {
	p.err = p.errorAt(pos, format, args...)
	p.tok = token{kind: tokEOF, pos: pos}
	p.off = len(p.src)
}

func isIdentStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isIdentPart(c byte) bool  { return isIdentStart(c) || c >= '0' && c <= '9' || c == '-' }

func (p *parser) is(kind tokKind, text string) bool {
	return p.err == nil && p.tok.kind == kind && p.tok.text == text
}

func (p *parser) expect(text string) error {
	if p.err != nil {
		return p.err
	}
	if !p.is(tokPunct, text) {
		return p.errorf("expected %q, found %s", text, p.tok)
	}
	p.advance()
	return nil
}

func (p *parser) expr(depth int) (*Filter, error) {
	return p.binary(depth, Or, func() (*Filter, error) {
		return p.binary(depth, And, func() (*Filter, error) { return p.unary(depth) })
	})
}

// binary parses operand { op operand }, flattening a chain into one node.
func (p *parser) binary(depth int, op Op, operand func() (*Filter, error)) (*Filter, error) {
	first, err := operand()
	if err != nil {
		return nil, err
	}
	if !p.is(tokIdent, string(op)) {
		return first, nil
	}
	node := &Filter{Op: op, Args: []Filter{*first}}
	for p.is(tokIdent, string(op)) {
		p.advance()
		next, err := operand()
		if err != nil {
			return nil, err
		}
		node.Args = append(node.Args, *next)
	}
	return node, nil
}

func (p *parser) unary(depth int) (*Filter, error) {
	if depth > MaxDepth {
		return nil, p.errorf("filter nests deeper than %d", MaxDepth)
	}
	if p.err != nil {
		return nil, p.err
	}
	switch {
	case p.is(tokIdent, "not"):
		p.advance()
		arg, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return &Filter{Op: Not, Args: []Filter{*arg}}, nil
	case p.is(tokPunct, "("):
		p.advance()
		f, err := p.expr(depth + 1)
		if err != nil {
			return nil, err
		}
		return f, p.expect(")")
	case p.tok.kind == tokIdent && isCall(p.tok.text):
		return p.call()
	}
	return p.comparison()
}

// calls maps each function-style operator to its number of numeric args.
var calls = map[Op]int{Exists: 0, WithinRadius: 3, WithinBounds: 4}

func isCall(word string) bool { _, ok := calls[Op(word)]; return ok }

func (p *parser) call() (*Filter, error) {
	at := p.tok.pos
	f := &Filter{Op: Op(p.tok.text)}
	p.advance()
	if err := p.expect("("); err != nil {
		return nil, err
	}
	field, err := p.field()
	if err != nil {
		return nil, err
	}
	f.Field = field
	for range calls[f.Op] {
		if err := p.expect(","); err != nil {
			return nil, err
		}
		n, err := p.number()
		if err != nil {
			return nil, err
		}
		f.Geo = append(f.Geo, n)
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	return f, f.checkNode(fmt.Sprintf("column %d", at+1))
}

func (p *parser) number() (float64, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.tok.kind != tokNumber {
		return 0, p.errorf("expected a number, found %s", p.tok)
	}
	n, err := strconv.ParseFloat(p.tok.text, 64)
	if err != nil || !json.Valid([]byte(p.tok.text)) {
		return 0, p.errorf("%s is not a number", p.tok)
	}
	p.advance()
	return n, nil
}

func (p *parser) field() (string, error) {
	if p.err != nil {
		return "", p.err
	}
	switch {
	case p.tok.kind == tokQuoted:
	case p.tok.kind == tokIdent && !reserved[p.tok.text]:
	case p.tok.kind == tokIdent:
		return "", p.errorf("%s is a keyword; write a field with that name as `%s`", p.tok, p.tok.text)
	default:
		return "", p.errorf("expected a field name, found %s", p.tok)
	}
	name := p.tok.text
	if err := checkField(name); err != nil {
		return "", p.errorf("%s", err.(*events.Error).Detail)
	}
	p.advance()
	return name, nil
}

// reserved words cannot be bare field names.
var reserved = map[string]bool{"and": true, "or": true, "not": true, "in": true, "contains": true,
	"prefix": true, "exists": true, "within_radius": true, "within_bounds": true,
	"true": true, "false": true, "null": true}

// comparisons maps the written operators to Ops.
var comparisons = map[string]Op{"==": Eq, "!=": Ne, "<": Lt, "<=": Lte, ">": Gt, ">=": Gte,
	"in": In, "contains": Contains, "prefix": Prefix}

func (p *parser) comparison() (*Filter, error) {
	at := p.tok.pos
	field, err := p.field()
	if err != nil {
		return nil, err
	}
	if p.err != nil {
		return nil, p.err
	}
	op, ok := comparisons[p.tok.text]
	if !ok || p.tok.kind != tokPunct && p.tok.kind != tokIdent {
		return nil, p.errorf("expected an operator (==, !=, <, <=, >, >=, in, contains, prefix) after %q, found %s", field, p.tok)
	}
	p.advance()
	value, err := p.value(0)
	if err != nil {
		return nil, err
	}
	f := &Filter{Op: op, Field: field, Value: value}
	return f, f.checkNode(fmt.Sprintf("column %d", at+1))
}

// value reads one JSON value. Arrays and objects are read token by token
// so that their extent is known; their source text is then checked as JSON.
func (p *parser) value(depth int) (json.RawMessage, error) {
	if p.err != nil {
		return nil, p.err
	}
	if depth > MaxDepth {
		return nil, p.errorf("value nests deeper than %d", MaxDepth)
	}
	start := p.tok
	switch {
	case start.kind == tokString || start.kind == tokNumber ||
		start.kind == tokIdent && (start.text == "true" || start.text == "false" || start.text == "null"):
		if !json.Valid([]byte(start.text)) {
			return nil, p.errorf("%s is not a valid JSON value", start)
		}
		p.advance()
		return normalize(start.text), nil
	case p.is(tokPunct, "["), p.is(tokPunct, "{"):
		closer := map[string]string{"[": "]", "{": "}"}[start.text]
		p.advance()
		for !p.is(tokPunct, closer) {
			if start.text == "{" {
				if p.tok.kind != tokString {
					return nil, p.errorf("expected an object key string, found %s", p.tok)
				}
				p.advance()
				if err := p.expect(":"); err != nil {
					return nil, err
				}
			}
			if _, err := p.value(depth + 1); err != nil {
				return nil, err
			}
			if !p.is(tokPunct, ",") {
				break
			}
			p.advance()
		}
		if p.err != nil {
			return nil, p.err
		}
		end := p.tok.pos
		if err := p.expect(closer); err != nil {
			return nil, err
		}
		raw := p.src[start.pos : end+1]
		if !json.Valid([]byte(raw)) {
			return nil, p.errorAt(start.pos, "%q is not a valid JSON value", raw)
		}
		return normalize(raw), nil
	}
	return nil, p.errorf("expected a value (a JSON string, number, true, false, null, array or object), found %s", start)
}

// normalize gives a valid JSON value the exact form encoding/json writes
// for it (compact, HTML-escaped), so a Filter is unchanged by a trip
// through JSON.
func normalize(raw string) json.RawMessage {
	b, _ := json.Marshal(json.RawMessage(raw))
	return b
}
