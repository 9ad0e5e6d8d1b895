package query

import (
	"strconv"
	"strings"
)

// String renders f in the written form that Parse reads, so that
// Parse(f.String()) gives f back.
func (f *Filter) String() string {
	var b strings.Builder
	f.write(&b, false)
	return b.String()
}

// write renders f; nested says f is an operand, so and/or need parentheses.
func (f *Filter) write(b *strings.Builder, nested bool) {
	switch f.Op {
	case And, Or:
		switch len(f.Args) {
		case 0: // refused by Check; written only for display
			b.WriteString(string(f.Op) + "()")
			return
		case 1:
			f.Args[0].write(b, nested)
			return
		}
		if nested {
			b.WriteByte('(')
		}
		for i := range f.Args {
			if i > 0 {
				b.WriteString(" " + string(f.Op) + " ")
			}
			f.Args[i].write(b, true)
		}
		if nested {
			b.WriteByte(')')
		}
	case Not:
		b.WriteString("not ")
		f.Args[0].write(b, true)
	case Exists:
		b.WriteString("exists(" + quoteField(f.Field) + ")")
	case WithinRadius, WithinBounds:
		b.WriteString(string(f.Op) + "(" + quoteField(f.Field))
		for _, x := range f.Geo {
			b.WriteString(", " + strconv.FormatFloat(x, 'g', -1, 64))
		}
		b.WriteByte(')')
	default:
		b.WriteString(quoteField(f.Field) + " " + written[f.Op] + " " + string(f.Value))
	}
}

var written = func() map[Op]string {
	m := map[Op]string{}
	for text, op := range comparisons {
		m[op] = text
	}
	return m
}()

func quoteField(name string) string {
	if name != "" && isIdentStart(name[0]) && !reserved[name] && strings.IndexFunc(name, func(r rune) bool {
		return r > 0x7f || !isIdentPart(byte(r))
	}) < 0 {
		return name
	}
	return "`" + name + "`"
}
