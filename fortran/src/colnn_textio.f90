!> Line-by-line reading of text model files of any line length, with line numbers for messages,
!> and their writing through a memory buffer and a C write whose errors are seen.
module colnn_textio
  use, intrinsic :: iso_c_binding, only: c_char, c_int, c_long_long, c_null_char
  use colnn_kinds, only: i8
  use colnn_status
  use colnn_strings, only: str, next_token
  implicit none
  private

  public :: text_reader_t, text_writer_t

  type :: text_reader_t
    integer :: unit = -1
    character(len=:), allocatable :: path
    integer :: line_no = 0
    integer(i8) :: file_size = 0
    character(len=:), allocatable :: buf   !< grows to the longest line seen
    integer :: n = 0                        !< length of the current line in buf
  contains
    procedure :: open => reader_open
    procedure :: close => reader_close
    procedure :: next_line => reader_next_line
    procedure :: line => reader_line
    procedure :: where => reader_where
  end type text_reader_t

  !> Text collected in memory, then written by colnn_write_file (C: write, fsync, close, each
  !> checked). gfortran's writes, flush and close report success on a full disk (libgfortran 12
  !> drops ENOSPC), so a model file written with them could be truncated silently.
  type :: text_writer_t
    character(len=:), allocatable :: buf
    integer(i8) :: n = 0
  contains
    procedure :: add => writer_add
    procedure :: save => writer_save
  end type text_writer_t

contains

  subroutine reader_open(self, path, stat, errmsg)
    class(text_reader_t), intent(inout) :: self
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical :: exists
    integer :: ios
    character(len=256) :: msg
    self%path = path
    self%line_no = 0
    errmsg = ''
    stat = COLNN_OK
    inquire (file=path, exist=exists)
    if (.not. exists) then
      stat = COLNN_ERR_IO
      errmsg = path//': no such file'
      return
    end if
    inquire (file=path//'/.', exist=exists)
    if (exists) then
      stat = COLNN_ERR_IO
      errmsg = path//': is a directory, not a model file'
      return
    end if
    open (newunit=self%unit, file=path, status='old', action='read', access='sequential', &
          form='formatted', iostat=ios, iomsg=msg)
    if (ios /= 0) then
      stat = COLNN_ERR_IO
      errmsg = path//': cannot open: '//trim(msg)
      self%unit = -1
      return
    end if
    inquire (unit=self%unit, size=self%file_size)
    if (.not. allocated(self%buf)) allocate (character(len=4096) :: self%buf)
  end subroutine reader_open

  subroutine reader_close(self)
    class(text_reader_t), intent(inout) :: self
    if (self%unit /= -1) close (self%unit)
    self%unit = -1
  end subroutine reader_close

  !> Reads the next line; with skip_blank, blank lines and '#' comments are passed over.
  !> `eof` is true (and stat 0) at end of file.
  subroutine reader_next_line(self, eof, stat, errmsg, skip_blank)
    class(text_reader_t), intent(inout) :: self
    logical, intent(out) :: eof
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical, intent(in) :: skip_blank
    character(len=8192) :: chunk
    character(len=:), allocatable :: tmp
    integer :: ios, sz, pos, first, last
    character(len=256) :: msg

    stat = COLNN_OK
    errmsg = ''
    eof = .false.
    do
      self%n = 0
      do
        read (self%unit, '(a)', advance='no', iostat=ios, iomsg=msg, size=sz) chunk
        if (ios /= 0 .and. .not. is_iostat_eor(ios) .and. .not. is_iostat_end(ios)) then
          stat = COLNN_ERR_IO
          errmsg = self%path//':'//str(self%line_no + 1)//': read error: '//trim(msg)
          return
        end if
        if (sz > 0) then
          if (self%n + sz > len(self%buf)) then
            allocate (character(len=max(2 * len(self%buf), self%n + sz)) :: tmp)
            tmp(1:self%n) = self%buf(1:self%n)
            call move_alloc(tmp, self%buf)
          end if
          self%buf(self%n + 1:self%n + sz) = chunk(1:sz)
          self%n = self%n + sz
        end if
        if (is_iostat_eor(ios)) exit
        if (is_iostat_end(ios)) then
          if (self%n == 0) then
            eof = .true.
            return
          end if
          exit
        end if
      end do
      self%line_no = self%line_no + 1
      pos = utf8_error(self%buf(1:self%n))
      if (pos > 0) then
        stat = COLNN_ERR_FORMAT
        errmsg = self%where()//': not UTF-8 text (byte '//str(pos)//' of the line): not a '// &
                 'model file?'
        return
      end if
      if (.not. skip_blank) return
      pos = 1
      call next_token(self%buf(1:self%n), pos, first, last)
      if (last < first) cycle
      if (self%buf(first:first) == '#') cycle
      return
    end do
  end subroutine reader_next_line

  !> Position of the first byte of `s` that is not part of well-formed UTF-8, or 0.
  pure integer function utf8_error(s) result(bad)
    character(len=*), intent(in) :: s
    integer :: i, k, c, n_cont, lo, hi
    bad = 0
    i = 1
    do while (i <= len(s))
      c = iachar(s(i:i))
      lo = 128
      hi = 191
      select case (c)
      case (0:127); n_cont = 0
      case (194:223); n_cont = 1
      case (224); n_cont = 2; lo = 160
      case (225:236, 238:239); n_cont = 2
      case (237); n_cont = 2; hi = 159
      case (240); n_cont = 3; lo = 144
      case (241:243); n_cont = 3
      case (244); n_cont = 3; hi = 143
      case default
        bad = i
        return
      end select
      do k = 1, n_cont
        if (i + k > len(s)) then
          bad = i
          return
        end if
        c = iachar(s(i + k:i + k))
        if (c < lo .or. c > hi) then
          bad = i
          return
        end if
        lo = 128
        hi = 191
      end do
      i = i + n_cont + 1
    end do
  end function utf8_error

  function reader_line(self) result(s)
    class(text_reader_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = self%buf(1:self%n)
  end function reader_line

  !> 'path:line' for messages.
  function reader_where(self) result(s)
    class(text_reader_t), intent(in) :: self
    character(len=:), allocatable :: s
    s = self%path//':'//str(self%line_no)
  end function reader_where
  !> Appends `line` and a newline.
  subroutine writer_add(self, line)
    class(text_writer_t), intent(inout) :: self
    character(len=*), intent(in) :: line
    character(len=:), allocatable :: grown
    integer(i8) :: need
    need = self%n + len(line, i8) + 1
    if (.not. allocated(self%buf)) allocate (character(len=max(need, 65536_i8)) :: self%buf)
    if (need > len(self%buf, i8)) then
      allocate (character(len=max(need, 2 * len(self%buf, i8))) :: grown)
      grown(1:self%n) = self%buf(1:self%n)
      call move_alloc(grown, self%buf)
    end if
    self%buf(self%n + 1:need) = line//new_line('a')
    self%n = need
  end subroutine writer_add

  !> Writes the collected text to `path` (created or replaced). On any failure the partial
  !> file is removed and `errmsg` names `shown` (the file the caller is writing) and the reason.
  subroutine writer_save(self, path, shown, stat, errmsg)
    class(text_writer_t), intent(in) :: self
    character(len=*), intent(in) :: path, shown
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    interface
      integer(c_int) function c_write_file(path, buf, n, err, errlen) bind(C, name='colnn_write_file')
        import :: c_char, c_int, c_long_long
        character(kind=c_char), intent(in) :: path(*), buf(*)
        integer(c_long_long), value :: n
        character(kind=c_char), intent(out) :: err(*)
        integer(c_int), value :: errlen
      end function c_write_file
    end interface
    character(kind=c_char) :: err(256)
    character(len=1) :: empty(1)
    integer :: i
    stat = COLNN_OK
    errmsg = ''
    err = c_null_char
    empty = ' '
    if (self%n > 0) then
      i = c_write_file(path//c_null_char, self%buf, int(self%n, c_long_long), err, 256_c_int)
    else
      i = c_write_file(path//c_null_char, empty, 0_c_long_long, err, 256_c_int)
    end if
    if (i /= 0) then
      stat = COLNN_ERR_IO
      errmsg = shown//': cannot write: '
      do i = 1, size(err)
        if (err(i) == c_null_char) exit
        errmsg = errmsg//err(i)
      end do
      errmsg = errmsg//' (nothing was written to '//shown//')'
    end if
  end subroutine writer_save
end module colnn_textio
