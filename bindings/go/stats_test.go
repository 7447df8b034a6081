package wspush

import (
	"reflect"
	"strings"
	"testing"
)

// The counter list is written once, in the library; Stats must name the same values in the same
// order, because Stats() copies the C snapshot field by field in that order.
func TestStatsFieldsAreTheLibrarysTable(t *testing.T) {
	table := StatsFields()
	statsType := reflect.TypeOf(Stats{})
	if len(table) != statsType.NumField() {
		t.Fatalf("the library has %d values, Stats %d fields", len(table), statsType.NumField())
	}
	for i, field := range table {
		goField := statsType.Field(i)
		if tag := goField.Tag.Get("json"); tag != field.Name {
			t.Errorf("Stats field %d (%s) has JSON name %q; the library's value %d is %q", i, goField.Name, tag, i, field.Name)
		}
		if field.Counter != strings.HasSuffix(field.Name, "_total") || field.Help == "" {
			t.Errorf("%s: counter=%v help=%q", field.Name, field.Counter, field.Help)
		}
		if goField.Type.Kind() != reflect.Uint64 {
			t.Errorf("Stats.%s is %s, not uint64", goField.Name, goField.Type)
		}
	}
}
