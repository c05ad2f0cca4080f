!> Reader and writer of the colnn text model file (docs/model-format.md), and the parser of
!> number rows shared with the FKB reader.
module colnn_model_file
  use colnn_kinds, only: wp, sp, dp, i8, wp_name
  use colnn_status
  use colnn_strings, only: str, next_token, count_tokens, is_number_text, is_decimal, &
                           parse_int
  use colnn_textio, only: text_reader_t, text_writer_t
  use colnn_spec, only: layer_spec_t
  use, intrinsic :: ieee_arithmetic, only: ieee_is_finite
  use, intrinsic :: iso_c_binding, only: c_int, c_char, c_null_char
  implicit none
  private

  public :: model_header_t, read_model_file, write_model_file, parse_number_row, FORMAT_VERSION
  public :: atomic_rename

  integer, parameter :: FORMAT_VERSION = 1
  integer(i8), parameter :: MAX_DIM = huge(1)

  type :: model_header_t
    integer :: version = FORMAT_VERSION
    character(len=:), allocatable :: precision   !< 'float32' or 'float64' as declared
    integer :: n_inputs = 0, n_outputs = 0, n_layers = 0
    character(len=:), allocatable :: meta(:)     !< 'meta' lines, kept verbatim
  end type model_header_t

  interface
    function c_rename(old, new) bind(C, name='rename') result(r)
      import :: c_int, c_char
      character(kind=c_char), intent(in) :: old(*), new(*)
      integer(c_int) :: r
    end function c_rename
  end interface

contains

  !> Parses exactly `n` numbers from `text` into `values`, reading them in `precision` (so that a
  !> float32 file gives the exact float32 values in a double build). Errors name `where`.
  !> `allow_d` accepts Fortran D exponents (FKB files); colnn files use E only.
  subroutine parse_number_row(text, n, precision, values, where, stat, errmsg, allow_d)
    character(len=*), intent(in) :: text
    integer, intent(in) :: n
    character(len=*), intent(in) :: precision
    real(wp), intent(out) :: values(n)
    character(len=*), intent(in) :: where
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical, intent(in), optional :: allow_d
    integer(i8) :: found
    integer :: ios, i, pos, first, last
    logical :: d
    real(sp), allocatable :: v32(:)
    real(dp), allocatable :: v64(:)

    stat = COLNN_OK
    errmsg = ''
    d = .false.
    if (present(allow_d)) d = allow_d
    found = count_tokens(text)
    if (found /= n) then
      stat = COLNN_ERR_FORMAT
      errmsg = where//': expected '//str(n)//' values, found '//str(found)
      return
    end if
    if (.not. is_number_text(text, d)) then
      stat = COLNN_ERR_FORMAT
      pos = 1
      do i = 1, n
        call next_token(text, pos, first, last)
        if (.not. is_decimal(text(first:last), d)) exit
      end do
      errmsg = where//': value '//str(i)//" is not a number: '"//text(first:min(last, first + 40))//"'"
      return
    end if
    if (precision == 'float32') then
      allocate (v32(n))
      read (text, *, iostat=ios) v32
      values = real(v32, wp)
    else
      allocate (v64(n))
      read (text, *, iostat=ios) v64
      values = real(v64, wp)
    end if
    if (ios /= 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = where//': cannot read the values as numbers'
      return
    end if
    if (.not. all(ieee_is_finite(values))) then
      stat = COLNN_ERR_NONFINITE
      do i = 1, n
        if (.not. ieee_is_finite(values(i))) exit
      end do
      errmsg = where//': value '//str(i)//' is not finite (or overflows '//precision//')'
    end if
  end subroutine parse_number_row

  subroutine fail(stat, errmsg, code, msg)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer, intent(in) :: code
    character(len=*), intent(in) :: msg
    stat = code
    errmsg = msg
  end subroutine fail

  !> Splits a line into its first token (the key) and the rest (trimmed).
  subroutine split_key(line, key, rest)
    character(len=*), intent(in) :: line
    character(len=:), allocatable, intent(out) :: key, rest
    integer :: pos, first, last
    pos = 1
    call next_token(line, pos, first, last)
    key = line(first:last)
    rest = trim(adjustl(line(min(last + 1, len(line) + 1):)))
  end subroutine split_key

  !> Reads a whole colnn file into its header and one spec per layer.
  !> `training` receives the optional training block (optimizer state) that follows the layers.
  subroutine read_model_file(path, header, specs, stat, errmsg, training)
    character(len=*), intent(in) :: path
    type(model_header_t), intent(out) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    type(layer_spec_t), allocatable, intent(out), optional :: training
    type(text_reader_t) :: r
    type(layer_spec_t), allocatable :: tspec
    call r%open(path, stat, errmsg)
    if (stat /= 0) return
    call read_body(r, header, specs, stat, errmsg, tspec)
    if (stat == 0 .and. present(training) .and. allocated(tspec)) call move_alloc(tspec, training)
    call r%close()
    if (stat /= 0 .and. allocated(specs)) deallocate (specs)
  end subroutine read_model_file

  subroutine read_body(r, header, specs, stat, errmsg, training)
    type(text_reader_t), intent(inout) :: r
    type(model_header_t), intent(inout) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    type(layer_spec_t), allocatable, intent(inout) :: training
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical :: eof, ok
    character(len=:), allocatable :: key, rest, meta_tmp(:)
    integer(i8) :: ival, version
    integer :: n_layers_seen, n_meta
    logical :: have_precision, have_inputs, have_outputs, have_layers

    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    if (stat /= 0) return
    if (eof) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//': empty file')
      return
    end if
    call split_key(r%buf(1:r%n), key, rest)
    if (key /= 'colnn') then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": not a colnn model file "// &
                "(expected 'colnn VERSION' on the first line)")
      return
    end if
    call parse_int(rest, version, ok)
    if (.not. ok) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": bad format version '"//rest//"'")
      return
    end if
    if (version /= FORMAT_VERSION) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': format version '//str(version)// &
                ' is not supported (this library reads version '//str(FORMAT_VERSION)//')')
      return
    end if

    have_precision = .false.; have_inputs = .false.; have_outputs = .false.; have_layers = .false.
    allocate (character(len=256) :: header%meta(0))
    n_meta = 0
    do
      call r%next_line(eof, stat, errmsg, skip_blank=.true.)
      if (stat /= 0) return
      if (eof) then
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//': truncated: end of file in the header')
        return
      end if
      call split_key(r%buf(1:r%n), key, rest)
      select case (key)
      case ('precision', 'inputs', 'outputs', 'layers')
        if ((key == 'precision' .and. have_precision) .or. (key == 'inputs' .and. have_inputs) &
            .or. (key == 'outputs' .and. have_outputs) .or. (key == 'layers' .and. have_layers)) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": header key '"//key// &
                    "' given twice")
          return
        end if
      end select
      select case (key)
      case ('precision')
        if (rest /= 'float32' .and. rest /= 'float64') then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": precision must be float32 "// &
                    "or float64, not '"//rest//"'")
          return
        end if
        header%precision = rest
        have_precision = .true.
      case ('inputs', 'outputs', 'layers')
        call parse_int(rest, ival, ok)
        if (.not. ok .or. ival < 1 .or. ival > MAX_DIM) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": bad value '"//rest// &
                    "' for '"//key//"' (an integer from 1 to "//str(MAX_DIM)//' is expected)')
          return
        end if
        if (key == 'inputs') then
          header%n_inputs = int(ival); have_inputs = .true.
        else if (key == 'outputs') then
          header%n_outputs = int(ival); have_outputs = .true.
        else
          ! every layer needs at least 'layer T' and 'end': more cannot fit in the file
          if (ival > r%file_size / 8 + 1) then
            call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': '//str(ival)// &
                      ' layers cannot fit in a file of '//str(r%file_size)//' bytes')
            return
          end if
          header%n_layers = int(ival); have_layers = .true.
        end if
      case ('meta')
        if (.not. valid_meta(rest)) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": expected 'meta KEY TEXT' "// &
                    'with KEY of [a-z0-9_]')
          return
        end if
        n_meta = n_meta + 1
        allocate (character(len=max(256, len(rest))) :: meta_tmp(n_meta))
        if (n_meta > 1) meta_tmp(1:n_meta - 1) = header%meta
        meta_tmp(n_meta) = rest
        call move_alloc(meta_tmp, header%meta)
      case ('layer')
        exit
      case default
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": unknown header key '"//key//"'")
        return
      end select
    end do
    if (.not. (have_precision .and. have_inputs .and. have_outputs .and. have_layers)) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': the header must give precision, '// &
                'inputs, outputs and layers before the first layer')
      return
    end if

    allocate (specs(header%n_layers))
    n_layers_seen = 0
    do
      ! here the current line is 'layer TYPE'
      n_layers_seen = n_layers_seen + 1
      if (n_layers_seen > header%n_layers) then
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': more layer blocks than the '// &
                  str(header%n_layers)//' declared')
        return
      end if
      call read_layer(r, header, rest, specs(n_layers_seen), stat, errmsg)
      if (stat /= 0) return
      call check_name(specs, n_layers_seen, stat, errmsg)
      if (stat /= 0) return
      call r%next_line(eof, stat, errmsg, skip_blank=.true.)
      if (stat /= 0) return
      if (eof) exit
      call split_key(r%buf(1:r%n), key, rest)
      if (key == 'training' .and. n_layers_seen == header%n_layers) then
        allocate (training)
        call read_layer(r, header, 'training', training, stat, errmsg)
        if (stat /= 0) return
        call r%next_line(eof, stat, errmsg, skip_blank=.true.)
        if (stat /= 0) return
        if (.not. eof) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': unexpected content after '// &
                    'the training block')
          return
        end if
        exit
      end if
      if (key /= 'layer') then
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": expected 'layer TYPE', found '"// &
                  key//"'")
        return
      end if
    end do
    if (n_layers_seen /= header%n_layers) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//': truncated: '//str(n_layers_seen)// &
                ' layer blocks found, '//str(header%n_layers)//' declared')
      return
    end if
  end subroutine read_body

  subroutine read_layer(r, header, type_text, spec, stat, errmsg)
    type(text_reader_t), intent(inout) :: r
    type(model_header_t), intent(in) :: header
    character(len=*), intent(in) :: type_text
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    character(len=:), allocatable :: key, rest, tname
    logical :: eof, ok
    integer :: pos, first, last, rank, tline, i
    integer(i8) :: dims(2), nvals
    real(wp), allocatable :: values(:)

    stat = COLNN_OK
    errmsg = ''
    if (len_trim(type_text) == 0 .or. index(trim(type_text), ' ') > 0) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": expected 'layer TYPE'")
      return
    end if
    spec%type_name = trim(type_text)
    spec%source = r%path
    spec%line = r%line_no
    do
      call r%next_line(eof, stat, errmsg, skip_blank=.true.)
      if (stat /= 0) return
      if (eof) then
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//": truncated: layer '"// &
                  spec%type_name//"' opened at line "//str(spec%line)//" has no 'end'")
        return
      end if
      call split_key(r%buf(1:r%n), key, rest)
      select case (key)
      case ('end')
        if (len(rest) > 0) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": 'end' takes no value, found '"// &
                    rest(1:min(len(rest), 40))//"'")
        end if
        return
      case ('layer')
        call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": 'layer' before the 'end' of "// &
                  "layer '"//spec%type_name//"' opened at line "//str(spec%line))
        return
      case ('tensor')
        tline = r%line_no
        pos = 1
        call next_token(rest, pos, first, last)
        if (last < first) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//': tensor without a name')
          return
        end if
        tname = rest(first:last)
        rank = 0
        do
          call next_token(rest, pos, first, last)
          if (last < first) exit
          rank = rank + 1
          if (rank > 2) then
            call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": tensor '"//tname// &
                      "' has more than 2 dimensions")
            return
          end if
          call parse_int(rest(first:last), dims(rank), ok)
          if (.not. ok .or. dims(rank) < 1 .or. dims(rank) > MAX_DIM) then
            call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": tensor '"//tname// &
                      "': bad dimension '"//rest(first:last)//"'")
            return
          end if
        end do
        if (rank == 0) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": tensor '"//tname// &
                    "' has no dimensions")
          return
        end if
        if (rank == 1) dims(2) = 1
        nvals = dims(1) * dims(2)
        ! each value takes at least 2 bytes (a digit and a separator): reject sizes the file
        ! cannot hold before allocating anything
        if (nvals > r%file_size / 2 + 1) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": tensor '"//tname//"' declares "// &
                    str(nvals)//' values, more than a file of '//str(r%file_size)//' bytes holds')
          return
        end if
        allocate (values(nvals), stat=stat)
        if (stat /= 0) then
          call fail(stat, errmsg, COLNN_ERR_MEMORY, r%where()//": cannot allocate tensor '"// &
                    tname//"'")
          return
        end if
        if (rank == 1) then
          call r%next_line(eof, stat, errmsg, skip_blank=.false.)
          if (stat /= 0) return
          if (eof) then
            call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//": truncated: tensor '"//tname// &
                      "' (line "//str(tline)//') has no values')
            return
          end if
          call parse_number_row(r%buf(1:r%n), int(dims(1)), header%precision, values, &
                                r%where()//": tensor '"//tname//"'", stat, errmsg)
          if (stat /= 0) return
        else
          do i = 1, int(dims(1))
            call r%next_line(eof, stat, errmsg, skip_blank=.false.)
            if (stat /= 0) return
            if (eof) then
              call fail(stat, errmsg, COLNN_ERR_FORMAT, r%path//": truncated: tensor '"// &
                        tname//"' (line "//str(tline)//') ends after '//str(i - 1)//' of '// &
                        str(dims(1))//' rows')
              return
            end if
            call parse_number_row(r%buf(1:r%n), int(dims(2)), header%precision, &
                                  values((i - 1) * dims(2) + 1:i * dims(2)), &
                                  r%where()//": tensor '"//tname//"' row "//str(i), stat, errmsg)
            if (stat /= 0) return
          end do
        end if
        if (spec%find_tensor(tname) /= 0) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": tensor '"//tname// &
                    "' given twice")
          return
        end if
        call spec%add_tensor(tname, rank, int(dims), values, tline)
      case default
        if (spec%find_attr(key) /= 0) then
          call fail(stat, errmsg, COLNN_ERR_FORMAT, r%where()//": attribute '"//key// &
                    "' given twice")
          return
        end if
        call spec%add_attr(key, rest, r%line_no)
      end select
    end do
  end subroutine read_layer

  pure logical function valid_meta(text)
    character(len=*), intent(in) :: text
    integer :: i, n
    n = index(text, ' ') - 1
    if (n < 0) n = len(text)
    valid_meta = n > 0
    do i = 1, n
      select case (text(i:i))
      case ('a':'z', '0':'9', '_')
      case default; valid_meta = .false.
      end select
    end do
  end function valid_meta

  !> Every layer block has a name (kept for the way back to Keras), unique in the file.
  subroutine check_name(specs, k, stat, errmsg)
    type(layer_spec_t), intent(in) :: specs(:)
    integer, intent(in) :: k
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: a, i, b
    stat = COLNN_OK
    errmsg = ''
    a = specs(k)%find_attr('name')
    if (a == 0) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, specs(k)%where()//": lacks attribute 'name'")
      return
    end if
    if (len(specs(k)%attrs(a)%value) == 0) then
      call fail(stat, errmsg, COLNN_ERR_FORMAT, specs(k)%where(specs(k)%attrs(a)%line)// &
                ": attribute 'name' needs a value")
      return
    end if
    do i = 1, k - 1
      b = specs(i)%find_attr('name')
      if (specs(i)%attrs(b)%value == specs(k)%attrs(a)%value) then
        call fail(stat, errmsg, COLNN_ERR_FORMAT, specs(k)%where(specs(k)%attrs(a)%line)// &
                  ": layer name '"//specs(k)%attrs(a)%value//"' is used twice")
        return
      end if
    end do
  end subroutine check_name

  !> Renames atomically (POSIX rename): readers see the old file or the complete new one.
  subroutine atomic_rename(from, to, stat, errmsg)
    character(len=*), intent(in) :: from, to
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    stat = COLNN_OK
    errmsg = ''
    if (c_rename(from//c_null_char, to//c_null_char) /= 0) then
      stat = COLNN_ERR_IO
      errmsg = to//': cannot move the written file into place'
    end if
  end subroutine atomic_rename

  !> Writes header + layer specs to `path` via a temporary file and a rename: a file that
  !> could not be written whole (a full disk) is never renamed into place.
  subroutine write_model_file(path, n_inputs, n_outputs, specs, meta, stat, errmsg, training)
    character(len=*), intent(in) :: path
    integer, intent(in) :: n_inputs, n_outputs
    type(layer_spec_t), intent(in) :: specs(:)
    character(len=*), intent(in) :: meta(:)
    type(layer_spec_t), intent(in), optional :: training
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    type(text_writer_t) :: text
    integer :: k
    logical :: is_dp

    is_dp = wp == dp
    call text%add('colnn '//str(FORMAT_VERSION))
    call text%add('# colnn model file; format: docs/model-format.md')
    call text%add('precision '//wp_name)
    call text%add('inputs '//str(n_inputs))
    call text%add('outputs '//str(n_outputs))
    call text%add('layers '//str(size(specs)))
    do k = 1, size(meta)
      call text%add('meta '//trim(meta(k)))
    end do
    do k = 1, size(specs)
      call add_block(text, 'layer '//specs(k)%type_name, specs(k), is_dp)
    end do
    if (present(training)) call add_block(text, 'training', training, is_dp)
    call text%save(path//'.tmp', path, stat, errmsg)
    if (stat /= 0) return
    call atomic_rename(path//'.tmp', path, stat, errmsg)
  end subroutine write_model_file

  subroutine add_block(text, opening, spec, is_dp)
    type(text_writer_t), intent(inout) :: text
    character(len=*), intent(in) :: opening
    type(layer_spec_t), intent(in) :: spec
    logical, intent(in) :: is_dp
    integer :: a, t, i, d2
    call text%add('')
    call text%add(opening)
    do a = 1, spec%n_attrs
      call text%add(spec%attrs(a)%key//' '//spec%attrs(a)%value)
    end do
    do t = 1, spec%n_tensors
      associate (tn => spec%tensors(t))
        if (tn%rank == 1) then
          call text%add('tensor '//tn%name//' '//str(tn%shape(1)))
          call text%add(number_row(tn%values, is_dp))
        else
          call text%add('tensor '//tn%name//' '//str(tn%shape(1))//' '//str(tn%shape(2)))
          d2 = tn%shape(2)
          do i = 1, tn%shape(1)
            call text%add(number_row(tn%values((i - 1) * d2 + 1:i * d2), is_dp))
          end do
        end if
      end associate
    end do
    call text%add('end')
  end subroutine add_block

  !> One row of values, 9 significant digits (single) or 17 (double): enough to read back the
  !> same number.
  function number_row(values, is_dp) result(row)
    real(wp), intent(in) :: values(:)
    logical, intent(in) :: is_dp
    character(len=:), allocatable :: row
    character(len=*), parameter :: fmt_sp = '(*(es16.8e2))', fmt_dp = '(*(es25.16e3))'
    if (is_dp) then
      allocate (character(len=25 * size(values)) :: row)
      write (row, fmt_dp) values
    else
      allocate (character(len=16 * size(values)) :: row)
      write (row, fmt_sp) values
    end if
  end function number_row
end module colnn_model_file
